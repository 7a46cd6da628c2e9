// EP overlap: the combined 1F1B schedule (megatron-overlap.md section 6b). The forward of one (micro-batch, chunk)
// is paired layer by layer with the backward of another; each layer splits into nodes (A attention, D dispatch,
// M MLP/experts, C combine, W held weight gradients with delay_wgrad_compute) on the compute and EP comm streams,
// joined by CUDA events. Also the public combined_order() the memory estimate replays.
#include <algorithm>

#include "common/assert.hpp"
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models {
namespace lowering {

void RankLowering::flush_wgrads() {
  auto items = std::move(deferred_);
  deferred_.clear();
  for (auto& it : items) {
    schedule::Op& op = open<Compute>(x_.st.compute, std::move(it.deps));
    op.name = it.name;
    op.tags = it.tags;
    std::get<Compute>(op.body).kernel = it.kernel;
    OpId ready = op.id;      // `op` dangles once the add is opened
    if (it.main_grad_add) {  // the held GEMM's main_grad.add_, named after it
      const std::uint64_t bytes = wgrad_weight_elements(it.kernel) * k_.main_grad_add_bytes_per_element;
      schedule::Op& add = open<Compute>(x_.st.compute, {});
      if (x_.op_names) add.name = it.name + "_main_grad_add";
      add.tags = it.tags;
      std::get<Compute>(add.body).kernel = Elementwise{bytes, 0};
      ready = add.id;
    }
    grad_ready(it.param, ready);
  }
}

void RankLowering::enter(const Side& sd, std::int32_t layer) {
  cur_mb_ = static_cast<std::int32_t>(sd.mb);
  cur_chunk_ = static_cast<std::int32_t>(sd.chunk);
  cur_layer_ = layer;
  prefix_ = sd.fwd ? "fwd." : "bwd.";
  hooks_on_ = !sd.fwd && grad_hooks_enabled(sd.mb);
  hook_chunk_ = sd.chunk;
}

void RankLowering::node_host(std::string_view node, bool backward) {
  const HostCosts& hc = x_.cfg->host;
  const Nanos ns = 2 * hc.event_record_ns + hc.ep_node_ns + (backward ? hc.ep_backward_call_ns : 0);
  if (ns > 0) {
    emit(x_.st.compute, Name{"node_", node}, schedule::Host{ns}, {}, backward ? Phase::kBwd : Phase::kFwd, "ep");
  }
}

template <typename Body>
void RankLowering::node_body(const Side& sd, std::string_view node, std::initializer_list<Piece> pieces, Body&& body) {
  // A forward node calls module pieces (their own module calls); a backward node runs the autograd engine over the
  // nodes its forward pieces recorded.
  if (sd.fwd)
    body();
  else
    bwd_ops(Name{"host_bwd_", node}, nodes_of(pieces), std::forward<Body>(body));
}

template <typename Body>
void RankLowering::comp_node(Side& sd, std::int32_t layer, std::string_view node, std::initializer_list<Piece> pieces,
                             Body&& body) {
  enter(sd, layer);
  node_host(node, !sd.fwd);
  const auto start = static_cast<OpId>(ops_.size());
  pending_.insert(pending_.end(), sd.ev.begin(), sd.ev.end());
  node_body(sd, node, pieces, body);
  for (OpId i = static_cast<OpId>(ops_.size()); i-- > start;) {
    if (gpu_op_on(i, x_.st.compute)) {
      sd.ev = {i};
      sd.ev.insert(sd.ev.end(), pending_.begin(), pending_.end());  // blocking comm at the node's tail
      break;
    }
  }
}

template <typename Body>
void RankLowering::comm_node(Side& sd, std::int32_t layer, std::string_view node, std::initializer_list<Piece> pieces,
                             Body&& body) {
  enter(sd, layer);
  node_host(node, !sd.fwd);
  const auto start = static_cast<OpId>(ops_.size());
  comm_node_ = true;
  node_deps_ = sd.ev;
  node_body(sd, node, pieces, body);
  comm_node_ = false;
  node_deps_.clear();
  for (OpId i = static_cast<OpId>(ops_.size()); i-- > start;) {
    if (gpu_op_on(i, x_.st.ep)) {
      sd.ev = {i};
      break;
    }
  }
}

void RankLowering::wgrad_node(Side& sd, std::int32_t layer, std::string_view node) {
  if (deferred_.empty()) return;
  enter(sd, layer);
  node_host(node, true);
  bwd_ops(Name{"host_bwd_", node}, 0, [&] { flush_wgrads(); });  // backward_dw(): no autograd node
}

void RankLowering::f_attn(Side& f, std::uint32_t l) {
  comp_node(f, static_cast<std::int32_t>(l), "A", {Piece::kAttn, Piece::kMoePre}, [&] {
    // The layer's forward pre-hooks wait for its param all-gather (overlap_param_gather) right before its first
    // forward use, not at the chunk's start: the other micro-batch's backward pieces issued before stay free.
    for (const auto& name : x_.layer_param_names[l]) param_gather_wait(f.chunk, name, f.mb);
    attn_block_fwd(l, Phase::kFwd);
    if (x_.model->is_moe_layer(l)) moe_pre_fwd(Phase::kFwd);
  });
}

void RankLowering::f_dispatch(Side& f, std::uint32_t l) {
  if (x_.model->is_moe_layer(l))
    comm_node(f, static_cast<std::int32_t>(l), "D", {Piece::kDispatch}, [&] { moe_dispatch_fwd(Phase::kFwd); });
}

void RankLowering::f_mlp(Side& f, std::uint32_t l) {
  comp_node(f, static_cast<std::int32_t>(l), "M", {Piece::kExperts, Piece::kMlp}, [&] {
    if (x_.model->is_moe_layer(l))
      moe_experts_fwd(Phase::kFwd);
    else
      dense_mlp_fwd(Phase::kFwd);
  });
}

void RankLowering::f_combine(Side& f, std::uint32_t l) {
  if (x_.model->is_moe_layer(l))
    comm_node(f, static_cast<std::int32_t>(l), "C", {Piece::kCombine}, [&] { moe_combine_fwd(Phase::kFwd); });
}

void RankLowering::b_combine(Side& b, std::uint32_t l) {
  if (!x_.model->is_moe_layer(l)) return;
  comm_node(b, static_cast<std::int32_t>(l), "C", {Piece::kCombine}, [&] { moe_combine_bwd(); });
}

void RankLowering::b_mlp(Side& b, std::uint32_t l) {
  const std::string L = "L" + str(l) + ".";
  comp_node(b, static_cast<std::int32_t>(l), "M", {Piece::kExperts, Piece::kMlp}, [&] {
    defer_wgrad_ = k_.delay_wgrad;
    if (x_.model->is_moe_layer(l))
      moe_experts_bwd(L);
    else
      dense_mlp_bwd(L);
    defer_wgrad_ = false;
  });
}

void RankLowering::b_dispatch(Side& b, std::uint32_t l) {
  if (x_.model->is_moe_layer(l))
    comm_node(b, static_cast<std::int32_t>(l), "D", {Piece::kDispatch}, [&] { moe_dispatch_bwd(); });
}

void RankLowering::b_attn(Side& b, std::uint32_t l) {
  const std::string L = "L" + str(l) + ".";
  comp_node(b, static_cast<std::int32_t>(l), "A", {Piece::kAttn, Piece::kMoePre}, [&] {
    defer_wgrad_ = k_.delay_wgrad;
    if (x_.model->is_moe_layer(l)) moe_pre_bwd(L);
    attn_block_bwd(l);
    defer_wgrad_ = false;
  });
}

void RankLowering::combined_step(const PipelineStep* F, const PipelineStep* B, const Exchange* post_f,
                                 const Exchange* post_b) {
  Side f{true, F ? F->microbatch : 0, F ? F->chunk : 0, {}};
  Side b{false, B ? B->microbatch : 0, B ? B->chunk : 0, {}};
  if (F) {  // pre_forward: wait for the received activation (handle.wait(): the compute stream waits), embedding
    enter(f, -1);
    if (!first_vs(f.chunk)) {
      TWINSTEP_ASSERT(!fwd_recv_[f.chunk].empty(), "rank %u: no activation received for mb %u chunk %u", rank_, f.mb,
                      f.chunk);
      f.ev.push_back(fwd_recv_[f.chunk].front());
      pending_.push_back(fwd_recv_[f.chunk].front());
      fwd_recv_[f.chunk].pop_front();
    }
    if (first_vs(f.chunk)) {
      param_gather_wait(f.chunk, "embedding", f.mb);
      comp_node(f, -1, "embedding", {Piece::kEmbedding}, [&] { embedding_fwd(); });
    }
  }
  if (B) {  // pre_backward: wait for the received gradient, then the loss/output-layer backward
    enter(b, -1);
    if (!last_vs(b.chunk)) {
      TWINSTEP_ASSERT(!bwd_recv_[b.chunk].empty(), "rank %u: no gradient received for mb %u chunk %u", rank_, b.mb,
                      b.chunk);
      b.ev.push_back(bwd_recv_[b.chunk].front());
      pending_.push_back(bwd_recv_[b.chunk].front());
      bwd_recv_[b.chunk].pop_front();
    }
    if (last_vs(b.chunk)) comp_node(b, -1, "output", {Piece::kOutput}, [&] { output_bwd(); });
  }
  static const std::vector<std::uint32_t> kNoLayers;
  const auto& lf = F ? layers_of(f.chunk) : kNoLayers;
  const auto& lb = B ? layers_of(b.chunk) : kNoLayers;
  const std::size_t paired = std::min(lf.size(), lb.size());
  std::int32_t held_wa_layer = -1;
  for (std::size_t i = 0; i < paired; ++i) {
    const std::uint32_t fl = lf[i], bl = lb[lb.size() - 1 - i];
    b_combine(b, bl);                                    // 1
    f_attn(f, fl);                                       // 2
    b_mlp(b, bl);                                        // 3
    f_dispatch(f, fl);                                   // 4
    wgrad_node(b, static_cast<std::int32_t>(bl), "WM");  // 5 (delay_wgrad only)
    b_dispatch(b, bl);                                   // 6
    f_mlp(f, fl);                                        // 8
    f_combine(f, fl);                                    // 9
    b_attn(b, bl);                                       // 10
    if (i + 1 == lb.size())
      held_wa_layer = static_cast<std::int32_t>(bl);  // the chunk's last backward layer
    else
      wgrad_node(b, static_cast<std::int32_t>(bl), "WA");  // 11
  }
  for (std::size_t i = paired; i < lb.size(); ++i) {  // remaining B layers
    const std::uint32_t bl = lb[lb.size() - 1 - i];
    b_combine(b, bl);
    b_mlp(b, bl);
    wgrad_node(b, static_cast<std::int32_t>(bl), "WM");
    b_dispatch(b, bl);
    b_attn(b, bl);
    if (i + 1 == lb.size())
      held_wa_layer = static_cast<std::int32_t>(bl);
    else
      wgrad_node(b, static_cast<std::int32_t>(bl), "WA");
  }
  for (std::size_t i = paired; i < lf.size(); ++i) {  // remaining F layers
    f_attn(f, lf[i]);
    f_dispatch(f, lf[i]);
    f_mlp(f, lf[i]);
    f_combine(f, lf[i]);
  }
  cur_mb_ = cur_chunk_ = cur_layer_ = -1;  // the P2P ops carry no micro-batch (as in the other schedules)
  prefix_.clear();
  if (F && post_f != nullptr) {  // post_forward on the comm stream: after the F chain and the comm stream's work
    DepList after = f.ev;
    for (OpId i = static_cast<OpId>(ops_.size()); i-- > first_op_;) {
      if (gpu_op_on(i, x_.st.ep)) {
        after.push_back(i);
        break;
      }
    }
    exchange(*post_f, false, after, {});
  }
  if (B && post_b != nullptr) {  // post_backward on the compute stream: after everything issued there
    DepList after = b.ev;
    if (last_compute_ != schedule::kNoOp) after.push_back(last_compute_);
    exchange(*post_b, false, {}, after);
  }
  if (B && held_wa_layer >= 0) wgrad_node(b, held_wa_layer, "WA");  // after the P2P post-processing
  if (F && last_vs(f.chunk)) {
    enter(f, -1);
    param_gather_wait(f.chunk, "final_norm", f.mb);
    param_gather_wait(f.chunk, "output", f.mb);
    comp_node(f, -1, "output", {Piece::kOutput}, [&] { output_fwd(); });
  }
  if (B && first_vs(b.chunk)) comp_node(b, -1, "embedding", {Piece::kEmbedding}, [&] { embedding_bwd(); });
  if (F && !f.ev.empty()) last_fwd_output_ = f.ev.front();
  if (B && !b.ev.empty()) last_bwd_output_ = b.ev.front();
  hooks_on_ = false;
  cur_mb_ = cur_chunk_ = cur_layer_ = -1;
  prefix_.clear();
}

}  // namespace lowering

std::vector<CombinedStep> combined_order(const RunConfig& cfg, std::uint32_t r, std::uint32_t m) {
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  const std::uint32_t v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  std::vector<CombinedStep> out;
  auto only_f = [&](PipelineStep f) {
    CombinedStep c;
    c.has_forward = true;
    c.forward = f;
    out.push_back(c);
  };
  auto only_b = [&](PipelineStep b) {
    CombinedStep c;
    c.has_backward = true;
    c.backward = b;
    out.push_back(c);
  };
  if (m == 0) return out;
  if (p == 1) {
    only_f({true, 0, 0});
    for (std::uint32_t mb = 1; mb < m; ++mb) {
      CombinedStep c;
      c.has_forward = c.has_backward = true;
      c.forward = {true, mb, 0};
      c.backward = {false, mb - 1, 0};
      out.push_back(c);
    }
    only_b({false, m - 1, 0});
    return out;
  }
  if (v == 1) throw Error("combined 1F1B with pipeline_model_parallel_size > 1 needs virtual pipelining (MCore)");
  const std::uint32_t g = cfg.microbatch_group_size_per_vp_stage == 0 ? p : cfg.microbatch_group_size_per_vp_stage;
  const lowering::VirtualTable table = lowering::schedule_table(m, v, g);
  const std::uint32_t total = m * v;
  const std::uint32_t w = std::min(total, lowering::interleaved_warmup(p, r, v, g, true));
  auto F = [&](std::uint32_t id) { return PipelineStep{true, table.entries[id].first, table.entries[id].second}; };
  auto B = [&](std::uint32_t id) {
    return PipelineStep{false, table.entries[id].first, v - 1 - table.entries[id].second};
  };
  for (std::uint32_t i = 0; i < w; ++i) only_f(F(i));
  for (std::uint32_t i = 0; i < total - w; ++i) {
    CombinedStep c;
    c.has_forward = c.has_backward = true;
    c.forward = F(w + i);
    c.backward = B(i);
    out.push_back(c);
  }
  for (std::uint32_t i = total - w; i < total; ++i) only_b(B(i));
  return out;
}

}  // namespace twinstep::models
