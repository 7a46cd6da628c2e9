// Pipeline schedules on one rank (megatron-overlap.md section 4b): no pipelining, 1F1B and interleaved 1F1B with
// Megatron's P2P flags (batched or overlapped exchanges), each forward/backward being a plain chunk or a step of
// the combined EP-overlap schedule; and the public pipeline_order() the memory estimate replays.
#include "models/lowering/pipeline_schedule.hpp"

#include <algorithm>
#include <optional>

#include "models/lower.hpp"
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models {
namespace lowering {

VirtualTable schedule_table(std::uint32_t m, std::uint32_t v, std::uint32_t g) {
  VirtualTable table;
  for (std::uint32_t lo = 0; lo < m; lo += g) {
    const std::uint32_t hi = lo + g >= m ? m : lo + g;
    for (std::uint32_t c = 0; c < v; ++c) {
      for (std::uint32_t mb = lo; mb < hi; ++mb) table.entries.emplace_back(mb, c);
    }
    if (hi == m) break;
  }
  return table;
}

void Interleaving::from_prev(std::uint32_t vid, bool forward, bool& recv, std::uint32_t& next_chunk) const {
  recv = true;
  const bool leading = forward ? pp_rank == 0 : pp_rank == pp - 1;
  const std::uint32_t last_chunk = forward ? vpp - 1 : 0;
  auto chunk_of = [&](std::uint32_t id) { return forward ? fchunk(id) : bchunk(id); };
  if (leading) {
    if (vid < pp - 1) {
      recv = false;
      next_chunk = chunk_of(vid + 1);
    } else {
      next_chunk = chunk_of(vid - (pp - 1));
      if (next_chunk == last_chunk) recv = false;
      next_chunk = forward ? next_chunk + 1 : next_chunk - 1;
    }
  } else {
    next_chunk = chunk_of(vid + 1);
  }
}

void RankLowering::interleaved_param_sync(const Interleaving& il, std::uint32_t vid) {
  // forward_step_helper: launch the param all-gather of the next chunk (aligned param gather).
  if (!k_.aligned_param_gather) return;
  const std::uint32_t sid = vid + il.pp_rank;
  if (sid < il.total && il.fmb(sid) == 0) {
    const std::uint32_t next = il.fchunk(sid) + 1;
    if (next > 1 && next < il.vpp) {
      for (std::size_t b = 0; b < buckets(next).size(); ++b) issue_param_ag(next, b);
    }
  }
}

void RankLowering::interleaved_grad_sync(Interleaving& il, std::uint32_t vid) {
  // backward_step_helper: aligned whole-chunk grad reduction.
  if (!k_.grad_overlap || !x_.cfg->align_grad_reduce) return;
  if (vid < il.pp_rank) return;
  const std::uint32_t gid = vid - il.pp_rank;
  if (il.bmb(gid) == il.microbatches - 1) {
    const std::uint32_t c = il.bchunk(gid);
    dispatch_chunk(c, false);
    il.synced.insert(c);
  }
}

void RankLowering::interleaved_fwd(const Interleaving& il, std::uint32_t vid) {
  interleaved_param_sync(il, vid);
  if (k_.ep_overlap)
    combined_fwd(il.fmb(vid), il.fchunk(vid));
  else
    chunk_fwd(il.fmb(vid), il.fchunk(vid));
}

void RankLowering::interleaved_bwd(Interleaving& il, std::uint32_t vid) {
  if (k_.ep_overlap)
    combined_bwd(il.bmb(vid), il.bchunk(vid));
  else
    chunk_bwd(il.bmb(vid), il.bchunk(vid));
  interleaved_grad_sync(il, vid);
}

void RankLowering::interleaved_steady(Interleaving& il, std::uint32_t k) {
  const std::uint32_t fk = k + il.warmup, bk = k;
  const bool ov = k_.p2p_overlap;
  Exchange fx, bx;
  fx.send_next = !last_vs(il.fchunk(fk));
  il.from_prev(fk, true, fx.recv_prev, fx.recv_prev_chunk);
  if (k + 1 == il.remaining) fx.recv_prev = false;
  bx.send_prev = !first_vs(il.bchunk(bk));
  il.from_prev(bk, false, bx.recv_next, bx.recv_next_chunk);
  if (k_.ep_overlap) {  // the F of virtual id fk paired with the B of virtual id bk, layer by layer
    interleaved_param_sync(il, fk);
    if (ov) {  // pp_post_forward / pp_post_backward post the P2P inside the combined step
      combined_pair(il.fmb(fk), il.fchunk(fk), il.bmb(bk), il.bchunk(bk), &fx, &bx);
      interleaved_grad_sync(il, bk);
    } else {  // no hooks: send_forward_backward_recv_forward_backward after the step
      combined_pair(il.fmb(fk), il.fchunk(fk), il.bmb(bk), il.bchunk(bk));
      interleaved_grad_sync(il, bk);
      Exchange both = fx;
      both.send_prev = bx.send_prev;
      both.recv_next = bx.recv_next;
      both.recv_next_chunk = bx.recv_next_chunk;
      exchange(both, true);
    }
  } else if (ov) {
    interleaved_fwd(il, fk);
    exchange(fx, false);
    interleaved_bwd(il, bk);
    exchange(bx, false);
  } else {
    interleaved_fwd(il, fk);
    interleaved_bwd(il, bk);
    Exchange both = fx;
    both.send_prev = bx.send_prev;
    both.recv_next = bx.recv_next;
    both.recv_next_chunk = bx.recv_next_chunk;
    exchange(both, true);  // send_forward_backward_recv_forward_backward
  }
}

void RankLowering::run_interleaved() {
  Interleaving il;
  il.pp = k_.pp;
  il.vpp = k_.vpp;
  il.pp_rank = co_.pp;
  il.microbatches = k_.microbatches;
  il.table = schedule_table(il.microbatches, il.vpp, k_.microbatch_group);
  il.total = il.microbatches * il.vpp;
  il.warmup = interleaved_warmup(il.pp, il.pp_rank, il.vpp, k_.microbatch_group, k_.ep_overlap);
  il.all_warmup = il.warmup >= il.total;
  if (il.all_warmup) il.warmup = il.total;
  il.remaining = il.total - il.warmup;
  const std::uint32_t p = il.pp, v = il.vpp, r = il.pp_rank, total = il.total;

  if (r != 0) exchange(Exchange{false, true, false, false, 0, 0}, true);
  for (std::uint32_t k = 0; k < il.warmup; ++k) {
    interleaved_fwd(il, k);
    const std::uint32_t next_chunk = il.fchunk(k + 1);
    bool recv_prev = !(r == 0 && next_chunk == 0);
    if (k + 1 == total) recv_prev = false;
    Exchange ex{!last_vs(il.fchunk(k)), recv_prev, false, false, next_chunk, 0};
    if (k + 1 == il.warmup && !il.all_warmup) {
      ex.recv_next = r != p - 1;
      ex.recv_next_chunk = v - 1;
    }
    exchange(ex, true);
  }
  for (std::uint32_t k = 0; k < il.remaining; ++k) interleaved_steady(il, k);
  if (il.all_warmup && r != p - 1) exchange(Exchange{false, false, false, true, 0, v - 1}, true);
  for (std::uint32_t k = il.remaining; k < total; ++k) {
    interleaved_bwd(il, k);
    const std::uint32_t next_chunk = k + 1 < total ? il.bchunk(k + 1) : 0;
    bool recv_next = !(r == p - 1 && next_chunk == v - 1);
    if (k + 1 == total) recv_next = false;
    exchange(Exchange{false, false, !first_vs(il.bchunk(k)), recv_next, 0, next_chunk}, true);
  }
  if (k_.grad_overlap) {
    for (std::uint32_t c = 0; c < v; ++c) {
      if (!il.synced.count(c)) dispatch_chunk(c, false);  // remaining grad reductions
    }
  }
}

void RankLowering::run_no_pipelining() {
  if (k_.ep_overlap) {  // combined_1f1b_schedule_for_no_pipelining: F0 | F1+B0 | ... | B(m-1)
    combined_fwd(0, 0);
    for (std::uint32_t mb = 1; mb < k_.microbatches; ++mb) combined_pair(mb, 0, mb - 1, 0);
    combined_bwd(k_.microbatches - 1, 0);
    return;
  }
  for (std::uint32_t mb = 0; mb < k_.microbatches; ++mb) {
    chunk_fwd(mb, 0);
    chunk_bwd(mb, 0);
  }
}

void RankLowering::run_1f1b() {
  const std::uint32_t p = k_.pp, r = co_.pp, m = k_.microbatches;
  const bool first = r == 0, last = r == p - 1;
  const std::uint32_t warmup = std::min(p - r - 1, m);
  const std::uint32_t remaining = m - warmup;
  const bool blocking = true;
  std::uint32_t f = 0, bk = 0;
  for (std::uint32_t i = 0; i < warmup; ++i) {
    if (!first) exchange(Exchange{false, true, false, false, 0, 0}, blocking);
    chunk_fwd(f++, 0);
    if (!last) exchange(Exchange{true, false, false, false, 0, 0}, blocking);
  }
  if (remaining > 0 && !first) exchange(Exchange{false, true, false, false, 0, 0}, blocking);
  for (std::uint32_t i = 0; i < remaining; ++i) {
    const bool last_iteration = i + 1 == remaining;
    chunk_fwd(f++, 0);
    if (!last) exchange(Exchange{true, false, false, true, 0, 0}, blocking);  // send_forward_recv_backward
    chunk_bwd(bk++, 0);
    if (!first) {
      exchange(Exchange{false, !last_iteration, true, false, 0, 0}, blocking);  // send_backward(_recv_forward)
    }
  }
  for (std::uint32_t i = 0; i < warmup; ++i) {
    if (!last) exchange(Exchange{false, false, false, true, 0, 0}, blocking);
    chunk_bwd(bk++, 0);
    if (!first) exchange(Exchange{false, false, true, false, 0, 0}, blocking);
  }
  if (k_.grad_overlap) dispatch_chunk(0, false);  // grad_sync_func for stages whose hooks did not fire
}

void RankLowering::exchange(const Exchange& ex, bool blocking, DepList fwd_after, DepList bwd_after) {
  const std::uint64_t bytes = act(k_.tokens_sp, k_.hidden);  // [s/(c t_sp), b, h]
  const CommId pp = x_.pp_of[rank_];
  const std::string_view ov = blocking ? "" : "pp";
  OpId posted[4];  // at most one op per direction
  std::size_t n_posted = 0;
  DepList fwd_producer = std::move(fwd_after), bwd_producer = std::move(bwd_after);
  if (fwd_producer.empty() && last_fwd_output_ != schedule::kNoOp) fwd_producer.push_back(last_fwd_output_);
  if (bwd_producer.empty() && last_bwd_output_ != schedule::kNoOp) bwd_producer.push_back(last_bwd_output_);
  std::optional<ContextScope> exchange_names;  // named ops only: no string built for a sweep's lowering
  if (x_.op_names) exchange_names.emplace(static_cast<OpEmitter&>(*this), "pp.x" + str(exchanges_) + ".");
  ++exchanges_;
  if (ex.send_next) {
    posted[n_posted++] =
        send(x_.st.pp_send_next, "send_fwd", pp, pp_peer(1), bytes, 0, Phase::kFwd, std::move(fwd_producer), ov);
  }
  if (ex.recv_prev) {
    const OpId r = recv(x_.st.pp_recv_prev, "recv_fwd", pp, pp_peer(-1), bytes, 0, Phase::kFwd, ov);
    posted[n_posted++] = r;
    fwd_recv_[ex.recv_prev_chunk].push_back(r);
  }
  if (ex.send_prev) {
    posted[n_posted++] =
        send(x_.st.pp_send_prev, "send_bwd", pp, pp_peer(-1), bytes, 1, Phase::kBwd, std::move(bwd_producer), ov);
  }
  if (ex.recv_next) {
    const OpId r = recv(x_.st.pp_recv_next, "recv_bwd", pp, pp_peer(1), bytes, 1, Phase::kBwd, ov);
    posted[n_posted++] = r;
    bwd_recv_[ex.recv_next_chunk].push_back(r);
  }
  if (blocking) {
    pending_.insert(pending_.end(), posted, posted + n_posted);
    if (k_.batch_p2p && x_.cfg->batch_p2p_sync) {
      for (std::size_t i = 0; i < n_posted; ++i) host_sync("batch_p2p_sync", posted[i], Phase::kNone);
    }
  }
}

void RankLowering::run() {
  bucket_state_.resize(k_.vpp);
  first_fwd_mb_.assign(k_.vpp, 0);
  for (std::uint32_t c = 0; c < k_.vpp; ++c) bucket_state_[c].resize(buckets(c).size());
  zero_grad_buffers();
  if (k_.aligned_param_gather) {  // at schedule start: all buckets of chunks 0 and 1
    for (std::uint32_t c = 0; c < std::min<std::uint32_t>(2, k_.vpp); ++c) {
      for (std::size_t b = 0; b < buckets(c).size(); ++b) issue_param_ag(c, b);
    }
  }
  if (k_.pp == 1)
    run_no_pipelining();
  else if (k_.vpp == 1)
    run_1f1b();
  else
    run_interleaved();
  for (std::uint32_t c = 0; c < k_.vpp; ++c) {
    TWINSTEP_ASSERT(fwd_recv_[c].empty() && bwd_recv_[c].empty(), "rank %u chunk %u: unconsumed P2P receives", rank_,
                    c);
  }
  finalize_and_optimize();
}

}  // namespace lowering

std::vector<PipelineStep> pipeline_order(const RunConfig& cfg, std::uint32_t r, std::uint32_t m) {
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  const std::uint32_t v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  std::vector<PipelineStep> out;
  if (p == 1) {
    for (std::uint32_t mb = 0; mb < m; ++mb) {
      out.push_back({true, mb, 0});
      out.push_back({false, mb, 0});
    }
    return out;
  }
  if (v == 1) {
    const std::uint32_t w = std::min(p - r - 1, m);
    std::uint32_t f = 0, b = 0;
    for (std::uint32_t i = 0; i < w; ++i) out.push_back({true, f++, 0});
    for (std::uint32_t i = 0; i < m - w; ++i) {
      out.push_back({true, f++, 0});
      out.push_back({false, b++, 0});
    }
    for (std::uint32_t i = 0; i < w; ++i) out.push_back({false, b++, 0});
    return out;
  }
  const std::uint32_t g = cfg.microbatch_group_size_per_vp_stage == 0 ? p : cfg.microbatch_group_size_per_vp_stage;
  const lowering::VirtualTable table = lowering::schedule_table(m, v, g);
  const std::uint32_t total = m * v;
  const std::uint32_t w = std::min(total, lowering::interleaved_warmup(p, r, v, g, false));
  auto F = [&](std::uint32_t id) { out.push_back({true, table.entries[id].first, table.entries[id].second}); };
  auto B = [&](std::uint32_t id) { out.push_back({false, table.entries[id].first, v - 1 - table.entries[id].second}); };
  for (std::uint32_t i = 0; i < w; ++i) F(i);
  for (std::uint32_t i = 0; i < total - w; ++i) {
    F(w + i);
    B(i);
  }
  for (std::uint32_t i = total - w; i < total; ++i) B(i);
  return out;
}

}  // namespace twinstep::models
