// MoE layers and token dispatchers (megatron-overlap.md sections 1 and 6): router, the alltoall / allgather / flex
// dispatchers (preprocess, dispatch, experts' grouped GEMMs, combine) forward and backward, the shared expert on
// the compute stream or overlapped on its own stream, and the EP comm stream pieces of the combined schedule.
// GCC 12's -Wmaybe-uninitialized reports DepList's union (schedule/dep_list.hpp: heap_ is read only when cap_ says it
// was set) in this file's lambdas once routing_ops() grew its host-figure branch: a false positive of its inlining.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <type_traits>

#include "models/lowering/moe_eager.hpp"
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models::lowering {

RoutingShape RankLowering::routing_shape() const {
  return {moe_tokens(), k_.experts, k_.topk, k_.hidden, k_.act_bytes, expert_rows(), k_.aux_loss};
}

void RankLowering::routing_ops(RoutingSegment segment, bool fused, bool backward, Phase ph, bool ep) {
  // Eager calls with a measured host figure per call (HostCosts::moe_routing_call_ns; a backward: per segment) get
  // one host op of it before their ops, which the enclosing call no longer counts per kernel; the others per kernel.
  const HostCosts& hc = x_.cfg->host;
  const double experts = fused ? -1.0 : static_cast<double>(k_.experts);
  const auto measured = [&hc, experts](const std::string& call, Nanos& ns) {
    return experts > 0 && moe_routing_call_ns(hc, call, experts, ns);
  };
  Nanos ns = 0;
  const bool bwd_measured =
      backward && segment != RoutingSegment::kUnsort && measured(std::string("bwd.") + segment_key(segment), ns);
  if (bwd_measured) host(Name{"host_", segment_key(segment), -1, "_bwd"}, ns, ph);
  std::string group;  // the call the previous kernel belongs to
  bool group_measured = bwd_measured;
  for (const EagerKernel& e : routing_kernels(segment, routing_shape(), fused, backward)) {
    if (!backward && e.group != group) {
      group = e.group;
      group_measured = measured("fwd." + group, ns);
      if (group_measured) host(Name{"host_", group}, ns, ph);
    }
    const std::uint32_t counted = modules_.empty() ? 0 : modules_.back().kernels;
    const std::uint64_t nodes = nodes_;
    if (e.kind == EagerKind::kCountD2H) {  // nonzero's count: copied to the host, which blocks on it
      const OpId copy = kernel(e.name, schedule::Memcpy{e.bytes, schedule::CopyKind::kD2H}, ph);
      host_sync(Name{e.name, "_sync"}, copy, ph);
    } else if (e.kind == EagerKind::kKernel) {
      if (ep)
        ep_elementwise(e.name, e.bytes, ph);
      else
        elementwise(e.name, e.bytes, ph);
    }
    if (group_measured && !modules_.empty()) modules_.back().kernels = counted;  // in the call's figure
    // A torch call records one autograd node (on its first kernel) or none (integer / boolean outputs).
    if (!backward && fused_ == 0) nodes_ = nodes + (e.node ? 1 : 0);
  }
}

OpId RankLowering::ep_elementwise(const Name& what, std::uint64_t bytes, Phase ph, DepList deps) {
  if (!comm_node_) return elementwise(what, bytes, ph, std::move(deps));
  auto d = take_node_deps();
  d.insert(d.end(), deps.begin(), deps.end());
  return kernel_on(x_.st.ep, what, Elementwise{bytes, 0}, ph, std::move(d), "ep");
}

template <typename K>
OpId RankLowering::flex_kernel(const Name& what, K&& kern, Phase ph) {
  DepList d = comm_node_ ? take_node_deps() : DepList{};
  if (!comm_node_ && last_compute_ != schedule::kNoOp) d.push_back(last_compute_);
  const std::uint32_t sms = std::is_same_v<std::decay_t<K>, schedule::Memcpy> ? 0 : k_.flex_sms;
  return kernel_on(x_.st.ep, what, std::forward<K>(kern), ph, std::move(d), comm_node_ ? "ep" : "", sms);
}

OpId RankLowering::ep_a2a(const Name& what, const std::vector<std::uint64_t>& copies, std::uint64_t bytes_per_copy,
                          schedule::DType dtype, Phase ph, std::uint32_t sm_count) {
  DepList d = comm_node_ ? take_node_deps() : DepList{};
  if (!comm_node_ && last_compute_ != schedule::kNoOp) d.push_back(last_compute_);
  schedule::Op& op = open<schedule::Collective>(x_.st.ep, std::move(d), records_node(dtype));
  label(op, what, ph, comm_node_ ? "ep" : "");
  auto& c = op.body.emplace<schedule::Collective>();
  c.kind = CollectiveKind::kAllToAll;
  c.sm_count = sm_count;
  c.comm = x_.ep_of[rank_];
  c.dtype = dtype;
  c.send_bytes.reserve(copies.size());
  for (auto n : copies) c.send_bytes.push_back(n * bytes_per_copy);
  for (auto b : c.send_bytes) c.bytes += b;
  const OpId id = op.id;
  if (!comm_node_) pending_.push_back(id);
  return id;
}

void RankLowering::flex_transfer(const Name& kernel_name, const Name& a2a_name,
                                 const std::vector<std::uint64_t>& copies, Phase ph) {
  std::uint64_t total = 0;
  for (auto c : copies) total += c;
  autograd_function([&] {  // one fused dispatch/combine Function
    const OpId k = flex_kernel(kernel_name, Elementwise{2 * act(total, k_.hidden), 0}, ph);
    if (k_.ep > 1)
      ep_a2a(a2a_name, copies, k_.hidden * k_.act_bytes, k_.dtype, ph, k_.flex_sms);
    else if (!comm_node_)
      pending_.push_back(k);
  });
}

void RankLowering::shared_expert_fwd(Phase ph) {
  const CommId tp = x_.tp_of[rank_];
  autograd_function([&] {  // TE column-parallel linear: the SP all-gather inside
    if (k_.tp > 1)
      collective(x_.st.tp, "shared_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.hidden), ph, true);
    gemm("shared_fc1", k_.tokens, shared_fc1_width(), k_.hidden, ph);
  });
  elementwise("shared_act", act(k_.tokens, shared_fc1_width()) + act(k_.tokens, k_.shared_ffn / k_.tp), ph);
  autograd_function([&] {  // TE row-parallel linear: the SP reduce-scatter inside
    gemm("shared_fc2", k_.tokens, k_.hidden, k_.shared_ffn / k_.tp, ph);
    if (k_.tp > 1) {
      collective(x_.st.tp, "shared_rs", CollectiveKind::kReduceScatter, tp, act(k_.tokens, k_.hidden), ph, true);
    }
  });
}

void RankLowering::moe_pre_fwd(Phase ph) {
  fwd_piece(Piece::kMoePre, [&] {
    fwd_module("host_pre_mlp_layernorm", ph,
               [&] { ln2_op_ = elementwise("ln2", 2 * act(k_.tokens_sp, k_.hidden), ph); });
    if (k_.shared_ffn > 0 && !k_.shared_overlap) fwd_module("host_shared_expert", ph, [&] { shared_expert_fwd(ph); });
    const std::uint64_t T = moe_tokens();
    // TopKRouter, a module call: per call + per kernel it launches, the gating GEMM and the routing kernels, eager or
    // TE's fused ones (moe_eager.hpp; moe_router_fusion). Every dispatcher runs the same router.
    fwd_module("host_moe_router", ph, [&] {
      kernel("router", Gemm{T, k_.experts, k_.hidden, 1, k_.dtype}, ph);  // bf16 under fp8 too (TE keeps it)
      routing_ops(RoutingSegment::kRouter, k_.router_fusion, false, ph);
    });
    const std::uint32_t span = k_.etp * k_.ep;
    if (dispatch_a2a_) {
      // preprocess: all-gather of per-expert counts over TP x EP, D2H copy of the splits (host syncs on it later).
      host_piece("host_moe_preprocess", ph, x_.cfg->host.moe_preprocess_ns, [&] {
        OpId counts = last_compute_;
        if (span > 1) {
          counts = collective(x_.st.tp_ep, "moe_count_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                              k_.experts * 8 * span, ph, false, {}, "", schedule::DType::kInt64);
        }
        d2h_ = kernel_on(x_.st.dtoh, "moe_splits_d2h",
                         schedule::Memcpy{2ull * k_.ep * 8 + k_.local_experts * 8, schedule::CopyKind::kD2H}, ph,
                         {counts});
      });
      // permute(): the dispatcher's own code, per kernel (eager: masked_select's two host syncs; moe_permute_fusion).
      fwd_ops("host_moe_permute", ph, [&] { routing_ops(RoutingSegment::kPermute, k_.permute_fusion, false, ph); });
    } else if (dispatch_ag_) {
      if (span > 1) {
        collective(x_.st.tp_ep, "moe_hidden_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                   act(T, k_.hidden) * span, ph, true);
        collective(x_.st.tp_ep, "moe_probs_map_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                   T * k_.experts * 5 * span, ph, true, {}, "", schedule::DType::kFP32);
      }
      elementwise("moe_permute", act(T * span, k_.hidden) + act(expert_rows(), k_.hidden), ph);
      // TE's grouped GEMM takes m_splits on the host: tokens_per_expert.tolist() syncs [inf].
      d2h_ = kernel("moe_counts_d2h", schedule::Memcpy{k_.local_experts * 8, schedule::CopyKind::kD2H}, ph);
      host_sync("moe_counts_sync", d2h_, ph);
    }
  });
}

void RankLowering::moe_dispatch_fwd(Phase ph) {
  fwd_piece(Piece::kDispatch, [&] {
    // The dispatcher's methods are no module calls: their ops cost per kernel, issued after the host's sync.
    if (dispatch_a2a_) {
      host_sync("moe_splits_sync", d2h_, ph);  // cuda_sync_point before_ep_alltoall
      fwd_ops("host_moe_dispatch", ph, [&] {
        if (k_.ep > 1) ep_a2a("moe_dispatch_a2a", dispatch_copies(), k_.hidden * k_.act_bytes, k_.dtype, ph);
        if (k_.shared_overlap) fwd_module("host_shared_expert", ph, [&] { shared_overlap_fc1(ph); });
        if (k_.ep > 1) ep_a2a("moe_probs_a2a", dispatch_copies(), 4, schedule::DType::kFP32, ph);
      });
    } else if (dispatch_flex_) {
      OpId cp = schedule::kNoOp;
      fwd_ops("host_flex_notify", ph, [&] {
        flex_kernel("flex_notify", Elementwise{std::uint64_t{k_.ep} * k_.experts * 4 * 2, 0}, ph);
        cp = flex_kernel("flex_counts_d2h", schedule::Memcpy{k_.local_experts * 8, schedule::CopyKind::kD2H}, ph);
      });
      host_sync("flex_counts_sync", cp, ph);  // DeepEP: the CPU waits for the received-count signal
      fwd_ops("host_moe_dispatch", ph, [&] { flex_transfer("flex_dispatch", "flex_dispatch_a2a", flex_copies(), ph); });
    }
  });
}

void RankLowering::shared_overlap_fc1(Phase ph) {
  DepList d{ln2_op_};
  autograd_function([&] {  // TE column-parallel linear: the SP all-gather inside
    if (k_.tp > 1) {
      schedule::Collective c{CollectiveKind::kAllGather, x_.tp_of[rank_], act(k_.tokens, k_.hidden), k_.dtype, {}, 0};
      d = {emit(x_.st.tp, "shared_ag", std::move(c), {ln2_op_}, ph, "shared_expert")};
    }
    kernel_on(x_.st.shared, "shared_fc1", linear_gemm(k_.tokens, shared_fc1_width(), k_.hidden, GemmRole::kFprop), ph,
              d, "shared_expert");
  });
  kernel_on(x_.st.shared, "shared_act",
            Elementwise{act(k_.tokens, shared_fc1_width()) + act(k_.tokens, k_.shared_ffn / k_.tp), 0}, ph, {},
            "shared_expert");
}

OpId RankLowering::shared_overlap_fc2(Phase ph) {
  OpId last = schedule::kNoOp;
  autograd_function([&] {  // TE row-parallel linear: the SP reduce-scatter inside
    last =
        kernel_on(x_.st.shared, "shared_fc2",
                  linear_gemm(k_.tokens, k_.hidden, k_.shared_ffn / k_.tp, GemmRole::kFprop), ph, {}, "shared_expert");
    if (k_.tp > 1) {
      schedule::Collective c{
          CollectiveKind::kReduceScatter, x_.tp_of[rank_], act(k_.tokens, k_.hidden), k_.dtype, {}, 0};
      last = emit(x_.st.tp, "shared_rs", std::move(c), {last}, ph, "shared_expert");
    }
  });
  return last;
}

void RankLowering::moe_experts_fwd(Phase ph) {
  fwd_piece(Piece::kExperts, [&] {
    const std::uint64_t n = expert_rows();
    const CommId etp = k_.etp > 1 ? x_.etp_of[rank_] : kNone;
    if (k_.etp > 1) {
      collective(x_.st.etp, "moe_etp_ag", CollectiveKind::kAllGather, etp, act(n, k_.hidden), ph, true);
      collective(x_.st.etp, "moe_etp_probs_ag", CollectiveKind::kAllGather, etp, n * 4, ph, true, {}, "",
                 schedule::DType::kFP32);
    }
    // sort_chunks_by_idxs (the alltoall dispatcher's; the others keep one sort kernel): eager split + cat or TE's.
    if (k_.local_experts > 1) routing_ops(RoutingSegment::kSort, k_.permute_fusion || !dispatch_a2a_, false, ph);
    const auto& groups = expert_groups();
    fwd_module("host_experts", ph, [&] {  // TEGroupedMLP with its two TEGroupedLinear calls
      fwd_module(
          "host_experts_fc1", ph,
          [&] {
            fp8_cast(
                "experts_fc1",
                n * k_.hidden + fp8_weight_cast_elements(k_.local_experts * k_.hidden * (k_.expert_ffn1 / k_.etp), ph),
                ph);
            kernel("experts_fc1", grouped_linear(groups, k_.expert_ffn1 / k_.etp, k_.hidden, GemmRole::kFprop), ph);
          },
          Nodes::kOne);
      elementwise("experts_act", act(n, k_.expert_ffn1 / k_.etp) + act(n, k_.expert_ffn / k_.etp) + n * 4, ph);
      fwd_module(
          "host_experts_fc2", ph,
          [&] {
            fp8_cast("experts_fc2",
                     n * (k_.expert_ffn / k_.etp) +
                         fp8_weight_cast_elements(k_.local_experts * (k_.expert_ffn / k_.etp) * k_.hidden, ph),
                     ph);
            kernel("experts_fc2", grouped_linear(groups, k_.hidden, k_.expert_ffn / k_.etp, GemmRole::kFprop), ph);
          },
          Nodes::kOne);
    });
    if (k_.local_experts > 1) routing_ops(RoutingSegment::kUnsort, k_.permute_fusion || !dispatch_a2a_, false, ph);
    if (k_.etp > 1)
      collective(x_.st.etp, "moe_etp_rs", CollectiveKind::kReduceScatter, etp, act(n, k_.hidden), ph, true);
  });
}

void RankLowering::moe_combine_fwd(Phase ph) {
  fwd_piece(Piece::kCombine, [&] {
    const std::uint64_t T = moe_tokens();
    DepList add_deps;
    fwd_ops("host_moe_combine", ph, [&] {
      if (dispatch_a2a_) {
        if (k_.ep > 1) ep_a2a("moe_combine_a2a", combine_copies(), k_.hidden * k_.act_bytes, k_.dtype, ph);
        if (k_.shared_overlap) add_deps.push_back(shared_overlap_fc2(ph));
      } else if (dispatch_flex_) {
        flex_transfer("flex_combine", "flex_combine_a2a", flex_combine_copies(), ph);
      } else {
        elementwise("moe_unpermute_local", act(expert_rows(), k_.hidden) + act(T * k_.etp * k_.ep, k_.hidden), ph);
        if (k_.etp * k_.ep > 1) {
          collective(x_.st.tp_ep, "moe_output_rs", CollectiveKind::kReduceScatter, x_.tpep_of[rank_],
                     act(T, k_.hidden) * k_.etp * k_.ep, ph, true);
        }
      }
    });
    if (!dispatch_ag_) {  // unpermute(): eager zeros + scatter_add_ or TE's (flex: its fused kernel)
      fwd_ops("host_moe_unpermute", ph,
              [&] { routing_ops(RoutingSegment::kUnpermute, k_.permute_fusion || dispatch_flex_, false, ph, true); });
    }
    fwd_ops("host_moe_output", ph, [&] {
      if (k_.shared_ffn > 0) ep_elementwise("shared_add", 3 * act(T, k_.hidden), ph, add_deps);
      ep_elementwise("residual2", 3 * act(k_.tokens_sp, k_.hidden), ph);
    });
  });
}

// Backward pieces, in backward order: C_b, M_b, D_b, A_b.
void RankLowering::moe_combine_bwd() {
  const Phase ph = Phase::kBwd;
  const std::uint64_t T = moe_tokens();
  if (dispatch_ag_) {
    if (k_.etp * k_.ep > 1) {
      collective(x_.st.tp_ep, "moe_output_grad_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                 act(T, k_.hidden) * k_.etp * k_.ep, ph, true);
    }
    elementwise("moe_unpermute_local_bwd", act(expert_rows(), k_.hidden) + act(T * k_.etp * k_.ep, k_.hidden), ph);
    return;
  }
  routing_ops(RoutingSegment::kUnpermute, k_.permute_fusion || dispatch_flex_, true, ph, true);
  if (dispatch_a2a_) {  // combine's gradient goes the dispatch direction
    if (k_.ep > 1) ep_a2a("moe_combine_grad_a2a", dispatch_copies(), k_.hidden * k_.act_bytes, k_.dtype, ph);
  } else {
    flex_transfer("flex_combine_bwd", "flex_combine_grad_a2a", flex_copies(), ph);
  }
}

void RankLowering::moe_experts_bwd(std::string_view L) {
  const Phase ph = Phase::kBwd;
  const std::uint64_t n = expert_rows();
  const CommId etp = k_.etp > 1 ? x_.etp_of[rank_] : kNone;
  if (k_.etp > 1)
    collective(x_.st.etp, "moe_etp_grad_ag", CollectiveKind::kAllGather, etp, act(n, k_.hidden), ph, true);
  if (k_.local_experts > 1) routing_ops(RoutingSegment::kUnsort, k_.permute_fusion || !dispatch_a2a_, true, ph);
  const auto& groups = expert_groups();
  // Weight gradients as grouped GEMMs with the same FLOPs (GroupedGemm has one k; the token count varies).
  fp8_cast("experts_fc2_dgrad", n * k_.hidden, ph);
  kernel("experts_fc2_dgrad", grouped_linear(groups, k_.expert_ffn / k_.etp, k_.hidden, GemmRole::kDgrad), ph);
  wgrad_op("experts_fc2_wgrad", grouped_linear(groups, k_.expert_ffn / k_.etp, k_.hidden, GemmRole::kWgrad), {},
           Name{L, "experts.fc2"});
  elementwise("experts_act_bwd", 2 * act(n, k_.expert_ffn1 / k_.etp) + act(n, k_.expert_ffn / k_.etp) + n * 4, ph);
  fp8_cast("experts_fc1_dgrad", n * (k_.expert_ffn1 / k_.etp), ph);
  kernel("experts_fc1_dgrad", grouped_linear(groups, k_.hidden, k_.expert_ffn1 / k_.etp, GemmRole::kDgrad), ph);
  wgrad_op("experts_fc1_wgrad", grouped_linear(groups, k_.expert_ffn1 / k_.etp, k_.hidden, GemmRole::kWgrad), {},
           Name{L, "experts.fc1"});
  if (k_.local_experts > 1) routing_ops(RoutingSegment::kSort, k_.permute_fusion || !dispatch_a2a_, true, ph);
  if (k_.etp > 1) {
    collective(x_.st.etp, "moe_etp_grad_rs", CollectiveKind::kReduceScatter, etp, act(n, k_.hidden), ph, true);
  }
}

void RankLowering::moe_dispatch_bwd() {
  const Phase ph = Phase::kBwd;
  if (dispatch_a2a_) {  // token and probs gradients go the combine direction
    if (k_.ep > 1) {
      ep_a2a("moe_dispatch_grad_a2a", combine_copies(), k_.hidden * k_.act_bytes, k_.dtype, ph);
      ep_a2a("moe_probs_grad_a2a", combine_copies(), 4, schedule::DType::kFP32, ph);
    }
  } else if (dispatch_flex_) {
    flex_transfer("flex_dispatch_bwd", "flex_dispatch_grad_a2a", flex_combine_copies(), ph);
  } else if (k_.etp * k_.ep > 1) {
    collective(x_.st.tp_ep, "moe_hidden_grad_rs", CollectiveKind::kReduceScatter, x_.tpep_of[rank_],
               act(moe_tokens(), k_.hidden) * k_.etp * k_.ep, ph, true);
  }
}

void RankLowering::moe_pre_bwd(std::string_view L) {
  const Phase ph = Phase::kBwd;
  const std::uint64_t T = moe_tokens();
  if (dispatch_a2a_)
    routing_ops(RoutingSegment::kPermute, k_.permute_fusion, true, ph);
  else if (dispatch_ag_)
    elementwise("moe_permute_bwd", 2 * act(T * k_.topk, k_.hidden), ph);
  routing_ops(RoutingSegment::kRouter, k_.router_fusion, true, ph);
  kernel("router_dgrad", Gemm{T, k_.hidden, k_.experts, 1, k_.dtype}, ph);
  wgrad_op("router_wgrad", Gemm{k_.experts, k_.hidden, T, 1, k_.dtype}, {}, Name{L, "router"}, {}, WgradOf::kTorchOp);
  if (k_.shared_ffn > 0) {
    const CommId tp = x_.tp_of[rank_];
    if (k_.tp > 1) {
      collective(x_.st.tp, "shared_grad_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.hidden), ph, true);
    }
    gemm("shared_fc2_dgrad", k_.tokens, k_.shared_ffn / k_.tp, k_.hidden, ph);
    wgrad_op("shared_fc2_wgrad", linear_gemm(k_.hidden, k_.shared_ffn / k_.tp, k_.tokens, GemmRole::kWgrad), {},
             Name{L, "shared.fc2"});
    elementwise("shared_act_bwd", 2 * act(k_.tokens, shared_fc1_width()) + act(k_.tokens, k_.shared_ffn / k_.tp), ph);
    gemm("shared_fc1_dgrad", k_.tokens, k_.hidden, shared_fc1_width(), ph);
    wgrad_op("shared_fc1_wgrad", linear_gemm(shared_fc1_width(), k_.hidden, k_.tokens, GemmRole::kWgrad), {},
             Name{L, "shared.fc1"});
    if (k_.tp > 1) {
      collective(x_.st.tp, "shared_grad_rs", CollectiveKind::kReduceScatter, tp, act(k_.tokens, k_.hidden), ph, true);
    }
  }
  input_norm_bwd("ln2", L);  // MoE layers' pre_mlp_layernorm: a TE norm module of its own
}

}  // namespace twinstep::models::lowering
