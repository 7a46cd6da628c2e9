// The run context shared by every rank's lowering (Ctx): the model, the config, the gated Dims, the schedule's
// streams and communicators, per-chunk layers, parameters and DP buckets; and the rank coordinates in Megatron's
// order (TP fastest, then CP, DP, PP; experts: ETP, EP, expert-DP, PP). Built once per lower() call.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/lower.hpp"
#include "models/lowering/dims.hpp"
#include "models/lowering/parameters.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models::lowering {

using schedule::CommId;
using schedule::RankId;
using schedule::StreamId;

/// The communicator id of a kind a rank does not use.
constexpr CommId kNone = 0xFFFFFFFFu;

/// Stream ids of the schedule (0 where the layout has no such stream).
struct Streams {
  StreamId compute = 0, tp = 0, tp_send = 0, tp_recv = 0, cp = 0, cp_recv = 0, cp_a2a = 0, dp = 0;
  StreamId pp_send_next = 0, pp_recv_prev = 0, pp_send_prev = 0, pp_recv_next = 0;
  // MoE: ep = EP all-to-alls (the NCCL ep stream; with EP overlap the comm_stream of the combined schedule, which
  // also runs the combine node's unpermute/residual kernels); tp_ep = count/token all-gathers over expert-TP x EP;
  // etp = expert-TP collectives; dtoh = cuda_dtoh_stream (D2H copies of split sizes); shared = SharedExpertMLP.stream.
  StreamId ep = 0, tp_ep = 0, etp = 0, dtoh = 0, shared = 0;
};

/// Global structure shared by all ranks.
struct Ctx {
  const ModelSpec* model = nullptr;
  const RunConfig* cfg = nullptr;
  Dims k;
  Streams st;
  std::vector<std::vector<std::uint32_t>> vs_layers;        ///< [chunk * pp + pp_rank] -> layers
  std::vector<std::vector<std::vector<DpBucket>>> buckets;  ///< [pp_rank][chunk]
  std::vector<std::vector<std::vector<Param>>> params;      ///< [pp_rank][chunk]
  // Communicator id per rank and kind (kNone if the kind is unused).
  std::vector<CommId> tp_of, cp_of, dp_of, pp_of, norm_of, embd_of;
  std::vector<CommId> cpa_of, cpp_of;                       ///< a2a+p2p: inner a2a group, outer p2p ring
  std::vector<std::uint32_t> comm_size;                     ///< [CommId] -> members
  std::vector<CommId> ep_of, etp_of, tpep_of, edp_of;       ///< MoE expert layout
  std::vector<std::vector<std::string>> layer_param_names;  ///< [layer] -> parameter names (param-gather waits)
  bool recompute_full = false, recompute_selective = false;
  bool op_names = true;  ///< LowerOptions::op_names
};

/// A rank's position in the dense layout.
struct Coords {
  std::uint32_t tp = 0, cp = 0, dp = 0, pp = 0;
};

inline Coords coords_of(const Dims& k, RankId r) {
  Coords co;
  co.tp = r % k.tp;
  co.cp = (r / k.tp) % k.cp;
  co.dp = (r / (k.tp * k.cp)) % k.dp;
  co.pp = r / (k.tp * k.cp * k.dp);
  return co;
}

inline RankId rank_of(const Dims& k, const Coords& co) {
  return co.tp + k.tp * (co.cp + k.cp * (co.dp + k.dp * co.pp));
}

/// Expert layout (MCore expert rank generator, order etp-ep-edp-pp): within a pipeline stage the local index
/// i = rank mod (tp*cp*dp) splits into expert-TP (fastest), EP, then expert-DP.
struct ExpertCoords {
  std::uint32_t etp = 0, ep = 0, edp = 0, pp = 0;
};

inline ExpertCoords expert_coords_of(const Dims& k, RankId r) {
  const std::uint32_t stage = k.tp * k.cp * k.dp;
  const std::uint32_t i = r % stage;
  return ExpertCoords{i % k.etp, (i / k.etp) % k.ep, i / (k.etp * k.ep), r / stage};
}

inline RankId expert_rank_of(const Dims& k, const ExpertCoords& co) {
  return co.etp + k.etp * (co.ep + k.ep * co.edp) + k.tp * k.cp * k.dp * co.pp;
}

/// Gates the config and builds the rank-independent parts: layers per virtual stage, parameters and DP buckets
/// per (pipeline rank, chunk), parameter names per layer. Streams and communicators are added by add_streams()
/// and add_communicators() when a schedule is built. Throws like lower().
[[nodiscard]] Ctx build_ctx(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings);

/// Adds the compute stream and the comm streams this layout uses to `s`, recording their ids in x.st.
void add_streams(Ctx& x, schedule::Schedule& s);

/// Adds every communicator of the layout to `s` (full member lists) and fills x's per-rank communicator ids and
/// x.comm_size (communicators.cpp).
void add_communicators(Ctx& x, schedule::Schedule& s);

}  // namespace twinstep::models::lowering
