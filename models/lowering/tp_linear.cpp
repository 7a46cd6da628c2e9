// Tensor-parallel linear layers (megatron-overlap.md section 3): column-parallel (SP all-gather of the input) and
// row-parallel (reduce-scatter or all-reduce of the output) forward and backward, blocking NCCL collectives or
// TE's userbuffer overlap (ring exchange, pipelined GEMM + reduce-scatter, bulk overlap in backward).
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models::lowering {

OpId RankLowering::ag_gemm(std::string_view site, std::uint64_t n, std::uint64_t kk, Phase ph) {
  const CommId tp = x_.tp_of[rank_];
  if (k_.tp == 1 || !k_.sp) return gemm(site, k_.tokens, n, kk, ph);
  if (!ub()) {
    collective(x_.st.tp, Name{site, "_ag"}, CollectiveKind::kAllGather, tp, act(k_.tokens, kk), ph, true);
    return gemm(site, k_.tokens, n, kk, ph);
  }
  return ub_ring_gemm(site, {"_ub_send", "_ub_recv", "_chunk"}, n, kk, ph).last_gemm;
}

RankLowering::Ring RankLowering::ub_ring_gemm(std::string_view site, const RingNames& names, std::uint64_t n,
                                              std::uint64_t kk, Phase ph) {
  const CommId tp = x_.tp_of[rank_];
  Ring ring;
  OpId prev_recv = schedule::kNoOp;
  const OpId producer = last_compute_;
  for (std::uint32_t i = 0; i < k_.tp; ++i) {
    OpId rv = schedule::kNoOp;
    if (i + 1 < k_.tp) {
      DepList d;
      if (i == 0 && producer != schedule::kNoOp) d.push_back(producer);
      if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
      send(x_.st.tp_send, Name{site, names.send, i}, tp, tp_peer(1), act(k_.tokens_sp, kk), 0, ph, std::move(d), "tp",
           k_.ring_transport, k_.ring_sms);
      rv = recv(x_.st.tp_recv, Name{site, names.recv, i}, tp, tp_peer(-1), act(k_.tokens_sp, kk), 0, ph, "tp",
                k_.ring_transport, k_.ring_sms);
    }
    DepList d;
    if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
    ring.last_gemm = gemm(Name{site, names.chunk, i}, k_.tokens_sp, n, kk, ph, std::move(d), "tp");
    prev_recv = rv;
    if (rv != schedule::kNoOp) ring.last_recv = rv;
  }
  return ring;
}

void RankLowering::gemm_rs(std::string_view site, std::uint64_t n, std::uint64_t kk, Phase ph) {
  const CommId tp = x_.tp_of[rank_];
  if (k_.tp == 1) {
    gemm(site, k_.tokens, n, kk, ph);
    return;
  }
  if (!ub()) {
    gemm(site, k_.tokens, n, kk, ph);
    collective(x_.st.tp, Name{site, k_.sp ? "_rs" : "_ar"},
               k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, n), ph, true);
    return;
  }
  const std::uint64_t rows = k_.tokens / kPipelinedRsSplits;
  for (std::uint32_t i = 0; i < kPipelinedRsSplits; ++i) {
    gemm(Name{site, "_chunk", i}, rows, n, kk, ph, {}, "tp");
    collective(x_.st.tp, Name{site, "_rs", i}, CollectiveKind::kReduceScatter, tp, act(rows, n), ph, true, {}, "tp");
  }
}

void RankLowering::rowparallel_bwd(std::string_view site, std::uint64_t out, std::uint64_t in, std::string_view L) {
  const CommId tp = x_.tp_of[rank_];
  OpId last_recv = schedule::kNoOp;
  if (k_.tp > 1 && k_.sp && ub()) {  // ring-exchange AG + dgrad GEMM (proj_dgrad / fc2_dgrad)
    last_recv =
        ub_ring_gemm(site, {"_dgrad_ub_send", "_dgrad_ub_recv", "_dgrad_chunk"}, in, out, Phase::kBwd).last_recv;
  } else {
    if (k_.tp > 1 && k_.sp) {
      collective(x_.st.tp, Name{site, "_dgrad_ag"}, CollectiveKind::kAllGather, tp, act(k_.tokens, out), Phase::kBwd,
                 true);
    }
    gemm(Name{site, "_dgrad"}, k_.tokens, in, out, Phase::kBwd);
  }
  DepList d;
  if (last_recv != schedule::kNoOp) d.push_back(last_recv);
  wgrad_op(Name{site, "_wgrad"}, linear_gemm(out, in, k_.tokens, GemmRole::kWgrad), std::move(d), Name{L, site},
           ub() ? "tp" : "");
}

void RankLowering::colparallel_bwd(std::string_view site, std::uint64_t out, std::uint64_t in, std::string_view L,
                                   std::string_view ln) {
  const CommId tp = x_.tp_of[rank_];
  const std::string_view ov = ub() ? "tp" : "";
  OpId ag = schedule::kNoOp, red = schedule::kNoOp;
  if (k_.tp > 1 && k_.sp) {
    ag = collective(x_.st.tp, Name{site, "_lnout_ag"}, CollectiveKind::kAllGather, tp, act(k_.tokens, in), Phase::kBwd,
                    false, {}, ov);
  }
  const OpId dg = gemm(Name{site, "_dgrad"}, k_.tokens, in, out, Phase::kBwd, {}, ov);
  if (k_.tp > 1) {
    red = collective(x_.st.tp, Name{site, k_.sp ? "_dgrad_rs" : "_dgrad_ar"},
                     k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, in),
                     Phase::kBwd, false, {dg}, ov);
  }
  DepList wd;
  if (ag != schedule::kNoOp) wd.push_back(ag);
  wgrad_op(Name{site, "_wgrad"}, linear_gemm(out, in, k_.tokens, GemmRole::kWgrad), std::move(wd), Name{L, site}, ov);
  DepList ld;
  if (red != schedule::kNoOp) ld.push_back(red);
  input_norm_bwd(ln, L, std::move(ld));
}

}  // namespace twinstep::models::lowering
