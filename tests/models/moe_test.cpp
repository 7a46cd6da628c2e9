// MoE lowering (issue 4): the zoo's MoE models under EP layouts, dispatchers and EP overlap validate; all-to-all
// sizes against T*k*h*B; routing skew; the combined 1F1B schedule's issue order written out by hand from
// megatron-overlap.md section 6b; the MoE / EP-overlap gating rules; representative-rank lowering.
#include <algorithm>
#include <map>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::count_ops;
using twinstep::models::test::count_overlap;
using twinstep::models::test::moe_model;
using twinstep::models::test::problems;

namespace {

RunConfig moe_config(std::uint32_t world, std::uint32_t ep, std::uint32_t pp = 1, std::uint32_t vpp = 1,
                     std::uint32_t microbatches = 2) {
  RunConfig c = config(world, 1, pp, 1, vpp);
  c.seq_length = 256;
  c.expert_model_parallel_size = ep;
  c.cuda_device_max_connections = 32;
  c.global_batch_size = microbatches * (world / pp);
  return c;
}

bool has_warning(const Lowered& low, const std::string& part) {
  bool found = false;
  for (const auto& w : low.warnings) found |= w.find(part) != std::string::npos;
  return found;
}

std::vector<const schedule::Op*> ops_named(const schedule::Schedule& s, schedule::RankId rank,
                                           const std::string& part) {
  std::vector<const schedule::Op*> out;
  for (const auto& op : s.ops) {
    if (op.rank == rank && op.name.find(part) != std::string::npos) out.push_back(&op);
  }
  return out;
}

const schedule::Op& op_named(const schedule::Schedule& s, schedule::RankId rank, const std::string& name) {
  for (const auto& op : s.ops) {
    if (op.rank == rank && op.name == name) return op;
  }
  FAIL("no op " << name << " on rank " << rank);
  return s.ops.front();
}

/// Names of the EP-overlap node host ops of `rank`, in issue order.
std::vector<std::string> node_order(const schedule::Schedule& s, schedule::RankId rank) {
  std::vector<std::string> out;
  for (const auto& op : s.ops) {
    if (op.rank == rank && op.name.find(".node_") != std::string::npos) out.push_back(op.name);
  }
  return out;
}

void check_valid(const ModelSpec& m, const RunConfig& c, const std::string& what) {
  INFO(what);
  const Lowered low = lower(m, c);
  CHECK(problems(low.schedule).empty());
  CHECK(count_ops(low.schedule, "experts_fc1") > 0);
}

}  // namespace

TEST_CASE("models::moe: Qwen3-30B-A3B, Qwen3-Next, DeepSeek-V3, Mixtral lower under EP 1..64 and validate", "[moe]") {
  for (const char* id : {"qwen3-30b-a3b", "qwen3-next-80b-a3b", "deepseek-v3", "mixtral-8x7b"}) {
    const ModelSpec m = moe_model(id, 4);
    for (std::uint32_t ep : {1u, 2u, 4u, 8u, 16u, 64u}) {
      RunConfig c = moe_config(std::max(ep, 2u), ep);
      if (ep > m.num_moe_experts) {
        CHECK_THROWS_WITH(lower(m, c), twinstep_contains("must be divisible by expert_model_parallel_size"));
        continue;
      }
      check_valid(m, c, std::string(id) + " ep" + std::to_string(ep));
    }
  }
}

TEST_CASE("models::moe: dispatchers x EP overlap x delay_wgrad, PP 1 and PP 4 with VPP 2, validate", "[moe]") {
  for (const char* id : {"qwen3-30b-a3b", "deepseek-v3"}) {
    for (const char* disp : {"alltoall", "allgather", "flex"}) {
      for (int mode = 0; mode < 3; ++mode) {                         // none, ep, ep+delay_wgrad
        if (mode > 0 && std::string(disp) == "allgather") continue;  // rejected: tested in the gating cases
        for (std::uint32_t pp : {1u, 4u}) {
          const ModelSpec m = moe_model(id, pp == 1 ? 2 : 8);
          RunConfig c = pp == 1 ? moe_config(4, 4) : moe_config(8, 2, 4, 2, 4);
          c.moe_token_dispatcher_type = parse_token_dispatcher(disp, "disp");
          c.overlap_moe_expert_parallel_comm = mode > 0;
          c.delay_wgrad_compute = mode == 2;
          if (pp > 1) {
            c.overlap_p2p_comm = true;
            c.batch_p2p_comm = false;
          }
          check_valid(m, c,
                      std::string(id) + " " + disp + " mode " + std::to_string(mode) + " pp" + std::to_string(pp));
        }
      }
    }
  }
}

// The "Checked by" grid: every zoo MoE model under EP in {1, 2, 4, 8, 16, 64}, each dispatcher, EP overlap
// off / on / on with delay_wgrad, PP 1 and PP 4 with VPP 2 (overlap_p2p_comm on, as Bridge sets it for PP > 1 with
// VPP; off as well at EP 2). Every rank is lowered (no representatives) and validated. Combinations the gating
// rules reject are checked to be rejected: EP above the expert count, EP overlap at EP 1, EP overlap with the
// allgather dispatcher.
TEST_CASE("models::moe: every zoo MoE model x EP 1..64 x dispatcher x overlap x delay_wgrad x PP", "[moe][slow]") {
  std::size_t lowered = 0;
  for (const char* id : {"qwen3-30b-a3b", "qwen3-next-80b-a3b", "deepseek-v3", "mixtral-8x7b"}) {
    for (std::uint32_t ep : {1u, 2u, 4u, 8u, 16u, 64u}) {
      for (const char* disp : {"alltoall", "allgather", "flex"}) {
        for (int mode = 0; mode < 3; ++mode) {             // none, ep, ep+delay_wgrad
          for (int pp_case = 0; pp_case < 3; ++pp_case) {  // PP 1; PP 4 / VPP 2 with and without overlap_p2p_comm
            if (pp_case == 2 && ep != 2) continue;
            const std::uint32_t pp = pp_case == 0 ? 1 : 4;
            const ModelSpec m = moe_model(id, pp == 1 ? 4 : 8);
            RunConfig c = pp == 1 ? moe_config(std::max(ep, 2u), ep) : moe_config(4 * std::max(ep, 2u), ep, 4, 2, 4);
            c.moe_token_dispatcher_type = parse_token_dispatcher(disp, "disp");
            c.overlap_moe_expert_parallel_comm = mode > 0;
            c.delay_wgrad_compute = mode == 2;
            c.overlap_p2p_comm = pp_case == 1;
            c.batch_p2p_comm = pp_case != 1;
            const std::string what = std::string(id) + " ep" + std::to_string(ep) + " " + disp + " mode " +
                                     std::to_string(mode) + " pp case " + std::to_string(pp_case);
            INFO(what);
            if (ep > m.num_moe_experts) {
              CHECK_THROWS_WITH(lower(m, c), twinstep_contains("must be divisible by expert_model_parallel_size"));
            } else if (mode > 0 && ep == 1) {
              CHECK_THROWS_WITH(lower(m, c), twinstep_contains("expert_model_parallel_size > 1"));
            } else if (mode > 0 && std::string(disp) == "allgather") {
              CHECK_THROWS_WITH(lower(m, c), twinstep_contains("alltoall or flex"));
            } else {
              check_valid(m, c, what);
              ++lowered;
            }
          }
        }
      }
    }
  }
  CHECK(lowered == 3 * 83 + 55);  // per model with EP 1..64: 6 + 21 + 4 x 14 = 83; Mixtral (8 experts) up to EP 8: 55
}

TEST_CASE("models::moe: TP/SP with expert TP and expert-DP, MLA and Gated DeltaNet ops", "[moe]") {
  const ModelSpec ds = moe_model("deepseek-v3", 2);
  RunConfig c = moe_config(8, 2);
  c.tensor_model_parallel_size = 2;
  c.sequence_parallel = true;
  c.cuda_device_max_connections = 1;
  c.use_distributed_optimizer = true;
  c.global_batch_size = 8;
  const Lowered low = lower(ds, c);
  REQUIRE(problems(low.schedule).empty());
  // MLA: down/up projections and attention with qk + rope = 192 head dim over 128 / 2 heads.
  const auto& attn = std::get<schedule::Attention>(
      std::get<schedule::Compute>(op_named(low.schedule, 0, "L1.mb0.fwd.attn").body).kernel);
  CHECK(attn.head_dim == 192);
  CHECK(attn.heads_q == 64);
  CHECK(attn.heads_kv == 64);
  CHECK(count_ops(low.schedule, "L1.mb0.fwd.q_down") == 8);
  CHECK(count_ops(low.schedule, "L1.mb0.fwd.kv_up") == 8);
  // Expert TP (= tp 2): all-gather of received tokens; expert-DP = 8 / (2 x 2) = 2: expert grads reduce there.
  CHECK(count_ops(low.schedule, "L1.mb0.fwd.moe_etp_ag") == 8);
  std::size_t expt_dp = 0;
  for (const auto& cm : low.schedule.communicators) expt_dp += cm.kind == "expt_dp" ? 1 : 0;
  CHECK(expt_dp == 4);
  // Grouped GEMMs sized by tokens received: T_sp * k * t_e = 128 * 8 * 2 rows over 256 / 2 local experts.
  const auto& fc1 = std::get<schedule::GroupedGemm>(
      std::get<schedule::Compute>(op_named(low.schedule, 0, "L1.mb0.fwd.experts_fc1").body).kernel);
  CHECK(fc1.m.size() == 128);
  std::uint64_t rows = 0;
  for (auto r : fc1.m) rows += r;
  CHECK(rows == 128 * 8 * 2);
  CHECK(fc1.n == 2 * 2048 / 2);
  // Expert TP 1 under TP 2 (each TP rank dispatches its SP shard on its own), with EP overlap and selective
  // recompute, PP 4 / VPP 2.
  RunConfig e1 = moe_config(16, 2, 4, 2, 4);
  e1.tensor_model_parallel_size = 2;
  e1.sequence_parallel = true;
  e1.expert_tensor_parallel_size = 1;
  e1.overlap_moe_expert_parallel_comm = true;
  e1.delay_wgrad_compute = true;
  e1.recompute_granularity = models::RecomputeGranularity::kSelective;
  e1.use_distributed_optimizer = true;
  e1.overlap_grad_reduce = true;
  e1.overlap_param_gather = true;
  const Lowered l1 = lower(moe_model("deepseek-v3", 8), e1);
  CHECK(problems(l1.schedule).empty());
  CHECK(count_ops(l1.schedule, "moe_etp_ag") == 0);
  CHECK(has_warning(l1, "CUDA_DEVICE_MAX_CONNECTIONS != 1"));
  // Qwen3-Next: Gated DeltaNet stand-in scan on the linear-attention layers, with a warning.
  const ModelSpec qn = moe_model("qwen3-next-80b-a3b", 4);
  const Lowered q = lower(qn, moe_config(2, 2));
  REQUIRE(problems(q.schedule).empty());
  CHECK(count_ops(q.schedule, "L0.mb0.fwd.gdn_scan_scores") == 2);
  CHECK(count_ops(q.schedule, "L3.mb0.fwd.gdn_scan") == 0);
  CHECK(count_ops(q.schedule, "L3.mb0.fwd.attn_gate") == 2);
  CHECK(count_ops(q.schedule, "L0.mb0.fwd.shared_fc1") == 2);
  CHECK(has_warning(q, "stand-in"));
}

TEST_CASE("models::moe: alltoall bytes per layer per micro-batch are T*k*h*B under balanced routing", "[moe]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  const RunConfig c = moe_config(8, 8);
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  const std::uint64_t T = 256, k = 8, h = 2048, B = 2;
  for (schedule::RankId r = 0; r < 8; ++r) {
    for (const char* name : {"L1.mb1.fwd.moe_dispatch_a2a", "L1.mb1.fwd.moe_combine_a2a",
                             "L1.mb1.bwd.moe_combine_grad_a2a", "L1.mb1.bwd.moe_dispatch_grad_a2a"}) {
      const auto& a2a = std::get<schedule::Collective>(op_named(low.schedule, r, name).body);
      CHECK(a2a.kind == schedule::CollectiveKind::kAllToAll);
      CHECK(a2a.bytes == T * k * h * B);
      CHECK(a2a.send_bytes == std::vector<std::uint64_t>(8, T * k * h * B / 8));
    }
    CHECK(std::get<schedule::Collective>(op_named(low.schedule, r, "L1.mb1.fwd.moe_probs_a2a").body).bytes ==
          T * k * 4);
  }
  // Per layer per micro-batch: 3 all-to-alls forward and 3 backward, one count all-gather, one host sync.
  CHECK(ops_named(low.schedule, 0, "L0.mb0.fwd.moe_").size() >= 3);
  CHECK(count_ops(low.schedule, "L0.mb0.fwd.moe_splits_sync") == 8);
  CHECK(count_ops(low.schedule, "L0.mb0.fwd.moe_count_ag") == 8);
  CHECK(count_ops(low.schedule, "L0.mb0.bwd.moe_count_ag") == 0);
  const auto& sync = op_named(low.schedule, 0, "L0.mb0.fwd.moe_splits_sync");
  const auto& d2h = low.schedule.ops[std::get<schedule::HostSync>(sync.body).target];
  CHECK(d2h.name == "L0.mb0.fwd.moe_splits_d2h");
  CHECK(std::get<schedule::Memcpy>(std::get<schedule::Compute>(d2h.body).kernel).kind == schedule::CopyKind::kD2H);
  // The host sync comes right before the token all-to-all in issue order.
  CHECK(op_named(low.schedule, 0, "L0.mb0.fwd.moe_dispatch_a2a").id == sync.id + 1);
}

TEST_CASE("models::moe: routing skew gives uneven per-peer splits, the busiest rank computes more", "[moe]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = moe_config(4, 4);
  c.moe_routing_skew = 2.0;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  const std::uint64_t copies = 256 * 8, row = 2048 * 2;
  for (schedule::RankId r = 0; r < 4; ++r) {
    const auto& d = std::get<schedule::Collective>(op_named(low.schedule, r, "L0.mb0.fwd.moe_dispatch_a2a").body);
    CHECK(d.send_bytes[0] == copies / 2 * row);  // 2 x the mean of copies / 4
    CHECK(d.send_bytes[1] == copies / 6 * row + row);
    std::uint64_t sum = 0;
    for (auto b : d.send_bytes) sum += b;
    CHECK(d.bytes == sum);
  }
  const auto& hot = std::get<schedule::Collective>(op_named(low.schedule, 0, "L0.mb0.fwd.moe_combine_a2a").body);
  CHECK(hot.bytes == 2 * copies * row);
  auto rows = [&](schedule::RankId r) {
    const auto& g = std::get<schedule::GroupedGemm>(
        std::get<schedule::Compute>(op_named(low.schedule, r, "L0.mb0.fwd.experts_fc1").body).kernel);
    std::uint64_t n = 0;
    for (auto x : g.m) n += x;
    return n;
  };
  CHECK(rows(0) == 2 * copies);
  CHECK(rows(0) + 3 * rows(1) == 4 * copies + 2 * 4);  // remainder of 2048 / 3 spread over the cold ranks
}

TEST_CASE("models::moe: flex holds moe_flex_num_sms SMs and host-syncs on the counts, allgather is k-independent",
          "[moe]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = moe_config(4, 4);
  c.moe_token_dispatcher_type = models::TokenDispatcher::kFlex;
  c.moe_flex_num_sms = 24;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  const auto& k = op_named(low.schedule, 0, "L0.mb0.fwd.flex_dispatch");
  CHECK(std::get<schedule::Compute>(k.body).sm_count == 24);
  CHECK(count_ops(low.schedule, "L0.mb0.fwd.flex_counts_sync") == 4);
  // One copy per (token, destination rank): R = e (1 - C(E - E/e, k) / C(E, k)) < k.
  const auto& a2a = std::get<schedule::Collective>(op_named(low.schedule, 0, "L0.mb0.fwd.flex_dispatch_a2a").body);
  CHECK(a2a.bytes < 256ull * 8 * 2048 * 2);
  CHECK(a2a.bytes > 256ull * 3 * 2048 * 2);
  c.moe_token_dispatcher_type = models::TokenDispatcher::kAllGather;
  const Lowered ag = lower(m, c);
  REQUIRE(problems(ag.schedule).empty());
  const auto& hid = std::get<schedule::Collective>(op_named(ag.schedule, 0, "L0.mb0.fwd.moe_hidden_ag").body);
  CHECK(hid.bytes == 256ull * 2048 * 2 * 4);
  CHECK(count_ops(ag.schedule, "a2a") == 0);
}

TEST_CASE("models::moe: combined 1F1B issue order for PP=1 (golden, section 6b)", "[moe][golden]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = moe_config(2, 2, 1, 1, 2);
  c.overlap_moe_expert_parallel_comm = true;
  c.delay_wgrad_compute = true;
  c.moe_permute_fusion = true;  // TE's one unpermute and sort kernels (the op names below)
  c.host.ep_node_ns = 1000;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  // F0 alone; F1 paired with B0 layer by layer (F layer i with B layer 1-i): C_b A_f M_b D_f W_M D_b M_f C_f A_b W_A,
  // the chunk's last backward layer's W_A after the layers; B1 alone.
  const std::vector<std::string> expected = {
      "mb0.fwd.node_embedding", "L0.mb0.fwd.node_A",      "L0.mb0.fwd.node_D",      "L0.mb0.fwd.node_M",
      "L0.mb0.fwd.node_C",      "L1.mb0.fwd.node_A",      "L1.mb0.fwd.node_D",      "L1.mb0.fwd.node_M",
      "L1.mb0.fwd.node_C",      "mb0.fwd.node_output",    "mb1.fwd.node_embedding", "mb0.bwd.node_output",
      "L1.mb0.bwd.node_C",      "L0.mb1.fwd.node_A",      "L1.mb0.bwd.node_M",      "L0.mb1.fwd.node_D",
      "L1.mb0.bwd.node_WM",     "L1.mb0.bwd.node_D",      "L0.mb1.fwd.node_M",      "L0.mb1.fwd.node_C",
      "L1.mb0.bwd.node_A",      "L1.mb0.bwd.node_WA",     "L0.mb0.bwd.node_C",      "L1.mb1.fwd.node_A",
      "L0.mb0.bwd.node_M",      "L1.mb1.fwd.node_D",      "L0.mb0.bwd.node_WM",     "L0.mb0.bwd.node_D",
      "L1.mb1.fwd.node_M",      "L1.mb1.fwd.node_C",      "L0.mb0.bwd.node_A",      "L0.mb0.bwd.node_WA",
      "mb1.fwd.node_output",    "mb0.bwd.node_embedding", "mb1.bwd.node_output",    "L1.mb1.bwd.node_C",
      "L1.mb1.bwd.node_M",      "L1.mb1.bwd.node_WM",     "L1.mb1.bwd.node_D",      "L1.mb1.bwd.node_A",
      "L1.mb1.bwd.node_WA",     "L0.mb1.bwd.node_C",      "L0.mb1.bwd.node_M",      "L0.mb1.bwd.node_WM",
      "L0.mb1.bwd.node_D",      "L0.mb1.bwd.node_A",      "L0.mb1.bwd.node_WA",     "mb1.bwd.node_embedding"};
  CHECK(node_order(low.schedule, 0) == expected);
  // Streams: D and C on the EP comm stream, A/M/W on compute.
  const auto ep = *schedule::find_stream(low.schedule, "ep");
  CHECK(op_named(low.schedule, 0, "L0.mb1.fwd.moe_dispatch_a2a").stream == ep);
  CHECK(op_named(low.schedule, 0, "L0.mb1.fwd.moe_unpermute").stream == ep);
  CHECK(op_named(low.schedule, 0, "L1.mb0.bwd.moe_combine_grad_a2a").stream == ep);
  // Data edges: D_b waits for M_b's event, not for the held expert wgrads of W_M.
  const auto& db = op_named(low.schedule, 0, "L1.mb0.bwd.moe_dispatch_grad_a2a");
  const auto& mb_last = op_named(low.schedule, 0, "L1.mb0.bwd.moe_sort_bwd");
  const auto& wm = op_named(low.schedule, 0, "L1.mb0.bwd.experts_fc1_wgrad");
  CHECK(std::find(db.deps.begin(), db.deps.end(), mb_last.id) != db.deps.end());
  CHECK(std::find(db.deps.begin(), db.deps.end(), wm.id) == db.deps.end());
  CHECK(wm.id < db.id);
  // D_f waits for A_f (its dispatch preprocess), the next F layer's A waits for C_f.
  const auto& df = op_named(low.schedule, 0, "L0.mb1.fwd.moe_dispatch_a2a");
  CHECK(std::find(df.deps.begin(), df.deps.end(), op_named(low.schedule, 0, "L0.mb1.fwd.moe_permute").id) !=
        df.deps.end());
  const auto& a1 = op_named(low.schedule, 0, "L1.mb1.fwd.ln1");
  CHECK(std::find(a1.deps.begin(), a1.deps.end(), op_named(low.schedule, 0, "L0.mb1.fwd.residual2").id) !=
        a1.deps.end());
  // Without delay_wgrad there are no W nodes; without the host costs no node ops.
  c.delay_wgrad_compute = false;
  const Lowered nd = lower(m, c);
  CHECK(count_ops(nd.schedule, "node_WM") == 0);
  c.host.ep_node_ns = 0;
  CHECK(node_order(lower(m, c).schedule, 0).empty());
  CHECK(count_overlap(nd.schedule, "ep") > 0);
}

TEST_CASE("models::moe: combined 1F1B order for PP=4/VPP=2, 8 micro-batches (golden, section 6b)", "[moe][golden]") {
  RunConfig c = moe_config(8, 2, 4, 2, 8);
  c.overlap_moe_expert_parallel_comm = true;
  auto fmt = [](const CombinedStep& s) {
    std::string out;
    if (s.has_forward) out += "F" + std::to_string(s.forward.microbatch) + "." + std::to_string(s.forward.chunk);
    if (s.has_forward && s.has_backward) out += "+";
    if (s.has_backward) out += "B" + std::to_string(s.backward.microbatch) + "." + std::to_string(s.backward.chunk);
    return out;
  };
  std::vector<std::string> got;
  for (const auto& s : combined_order(c, 0, 8)) got.push_back(fmt(s));
  // megatron-overlap.md 6b: W = 2(p-r-1) + (v-1)g + 1 = 11 on rank 0; 5 of 16 backward chunks paired.
  const std::vector<std::string> expected = {
      "F0.0", "F1.0", "F2.0",      "F3.0",      "F0.1",      "F1.1",      "F2.1",      "F3.1", "F4.0",
      "F5.0", "F6.0", "F7.0+B0.1", "F4.1+B1.1", "F5.1+B2.1", "F6.1+B3.1", "F7.1+B0.0", "B1.0", "B2.0",
      "B3.0", "B4.1", "B5.1",      "B6.1",      "B7.1",      "B4.0",      "B5.0",      "B6.0", "B7.0"};
  CHECK(got == expected);
  std::vector<std::string> p1;
  for (const auto& s : combined_order(moe_config(2, 2, 1, 1, 3), 0, 3)) p1.push_back(fmt(s));
  CHECK(p1 == std::vector<std::string>{"F0.0", "F1.0+B0.0", "F2.0+B1.0", "B2.0"});
  // The lowered schedule follows it: on rank 0, the first node of F7.0 is followed by B0.1's first node.
  c.host.ep_node_ns = 1000;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  const Lowered low = lower(moe_model("qwen3-30b-a3b", 16), c);
  REQUIRE(problems(low.schedule).empty());
  const auto nodes = node_order(low.schedule, 0);
  const auto it = std::find(nodes.begin(), nodes.end(), "L0.mb7.fwd.node_A");
  REQUIRE(it != nodes.end());
  REQUIRE(it != nodes.begin());
  CHECK(*(it - 1) == "L9.mb0.bwd.node_C");  // chunk 1 of pp rank 0 holds layers 8 and 9; B goes 9 then 8
  CHECK(*(it + 1) == "L9.mb0.bwd.node_M");
  std::size_t fwd_a = 0;
  for (const auto& n : nodes) fwd_a += n.find("fwd.node_A") != std::string::npos ? 1 : 0;
  CHECK(fwd_a == 2 * 8 * 2);  // layers per chunk x micro-batches x chunks
}

/// Names of `rank`'s EP-overlap node host ops and pipeline P2P ops in issue order, from the op named `first` on,
/// `count` of them.
std::vector<std::string> node_and_p2p_order(const schedule::Schedule& s, schedule::RankId rank,
                                            const std::string& first, std::size_t count) {
  std::vector<std::string> all;
  for (const auto& op : s.ops) {
    if (op.rank == rank && (op.name.find(".node_") != std::string::npos || op.name.rfind("pp.", 0) == 0)) {
      all.push_back(op.name);
    }
  }
  const auto it = std::find(all.begin(), all.end(), first);
  if (it == all.end()) return {};
  return std::vector<std::string>(it, it + static_cast<std::ptrdiff_t>(std::min<std::size_t>(count, all.end() - it)));
}

bool depends_on(const schedule::Op& op, schedule::OpId id) {
  return std::find(op.deps.begin(), op.deps.end(), id) != op.deps.end();
}

TEST_CASE("models::moe: combined 1F1B with PP=4/VPP=2 posts the P2P in the post_forward/post_backward hooks (golden)",
          "[moe][golden]") {
  // megatron-overlap.md 6b "Chunk level" (TransformerModelChunkSchedulePlan.run): pre_forward -> F embedding ->
  // pre_backward -> B output-layer backward -> paired layers -> remaining B -> remaining F -> post_forward
  // (send/recv forward, on the comm stream) -> post_backward (send/recv backward, on comp) -> the last B layer's W_A
  // -> F output layer + loss -> B embedding backward; per pair C_b A_f M_b D_f W_M D_b M_f C_f A_b W_A. The hooks
  // are MCore's pp_post_forward (send_forward_recv_forward) and pp_post_backward (send_backward_recv_backward) with
  // overlap_p2p_comm (section 4c), which Bridge sets for PP > 1 with VPP.
  RunConfig c = moe_config(8, 2, 4, 2, 8);
  c.overlap_moe_expert_parallel_comm = true;
  c.delay_wgrad_compute = true;
  c.host.ep_node_ns = 1000;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  const Lowered low = lower(moe_model("qwen3-30b-a3b", 16), c);
  REQUIRE(problems(low.schedule).empty());
  // Rank 0 (pp 0), first steady step F7.0 + B0.1: chunk 0 holds layers 0-1 (with the embedding), chunk 1 layers
  // 8-9. F sends to pp 1 and receives the next forward (F4.1) from pp 3; B sends its gradient to pp 3.
  const std::vector<std::string> rank0 = {
      "mb7.fwd.node_embedding", "L9.mb0.bwd.node_C", "L0.mb7.fwd.node_A", "L9.mb0.bwd.node_M", "L0.mb7.fwd.node_D",
      "L9.mb0.bwd.node_WM",     "L9.mb0.bwd.node_D", "L0.mb7.fwd.node_M", "L0.mb7.fwd.node_C", "L9.mb0.bwd.node_A",
      "L9.mb0.bwd.node_WA",     "L8.mb0.bwd.node_C", "L1.mb7.fwd.node_A", "L8.mb0.bwd.node_M", "L1.mb7.fwd.node_D",
      "L8.mb0.bwd.node_WM",     "L8.mb0.bwd.node_D", "L1.mb7.fwd.node_M", "L1.mb7.fwd.node_C", "L8.mb0.bwd.node_A",
      "pp.x11.send_fwd",        "pp.x11.recv_fwd",   "pp.x12.send_bwd",   "pp.x12.recv_bwd",   "L8.mb0.bwd.node_WA",
      "L9.mb1.bwd.node_C"};
  CHECK(node_and_p2p_order(low.schedule, 0, rank0.front(), rank0.size()) == rank0);
  // Rank 6 (pp 3, the last stage), step F4.1 + B3.0: chunk 1 (layers 14-15) ends with the output layer, which
  // comes after both hooks and the held W_A; its post_forward only receives (nothing to send from the last stage).
  const std::vector<std::string> rank6 = {
      "L7.mb3.bwd.node_C", "L14.mb4.fwd.node_A", "L7.mb3.bwd.node_M",   "L14.mb4.fwd.node_D", "L7.mb3.bwd.node_WM",
      "L7.mb3.bwd.node_D", "L14.mb4.fwd.node_M", "L14.mb4.fwd.node_C",  "L7.mb3.bwd.node_A",  "L7.mb3.bwd.node_WA",
      "L6.mb3.bwd.node_C", "L15.mb4.fwd.node_A", "L6.mb3.bwd.node_M",   "L15.mb4.fwd.node_D", "L6.mb3.bwd.node_WM",
      "L6.mb3.bwd.node_D", "L15.mb4.fwd.node_M", "L15.mb4.fwd.node_C",  "L6.mb3.bwd.node_A",  "pp.x20.recv_fwd",
      "pp.x21.send_bwd",   "L6.mb3.bwd.node_WA", "mb4.fwd.node_output", "mb4.bwd.node_output"};
  CHECK(node_and_p2p_order(low.schedule, 6, rank6.front(), rank6.size()) == rank6);
  // Data edges: the forward send waits for the F chain's last combine (post_forward runs on the comm stream);
  // the backward send waits for the last backward attention piece (the skip gradient added into ln1's input
  // gradient); the held W_A GEMMs are issued after the sends.
  const auto& send_f = op_named(low.schedule, 0, "pp.x11.send_fwd");
  CHECK(depends_on(send_f, op_named(low.schedule, 0, "L1.mb7.fwd.residual2").id));
  CHECK(send_f.tags.overlap == "pp");
  const auto& send_b = op_named(low.schedule, 0, "pp.x12.send_bwd");
  CHECK(depends_on(send_b, op_named(low.schedule, 0, "L8.mb0.bwd.ln1_residual_grad_add").id));
  CHECK(op_named(low.schedule, 0, "L8.mb0.bwd.qkv_wgrad").id > send_b.id);
  // pre_forward of the next step (F4.1 + B1.1) waits for the activation received in this step's post_forward.
  CHECK(depends_on(op_named(low.schedule, 0, "L8.mb4.fwd.ln1"), op_named(low.schedule, 0, "pp.x11.recv_fwd").id));
  // Without overlap_p2p_comm (no hooks) the P2P follows the whole step, as send_forward_backward_recv_forward_backward.
  c.overlap_p2p_comm = false;
  const Lowered nov = lower(moe_model("qwen3-30b-a3b", 16), c);
  REQUIRE(problems(nov.schedule).empty());
  const auto plain = node_and_p2p_order(nov.schedule, 0, "L8.mb0.bwd.node_A", 4);
  REQUIRE(plain.size() == 4);
  CHECK(plain[1] == "L8.mb0.bwd.node_WA");
  CHECK(plain[2].find("send_fwd") != std::string::npos);
}

TEST_CASE("models::moe: combined 1F1B waits for a layer's param all-gather right before its first forward use",
          "[moe][dp]") {
  // overlap_param_gather with the distributed optimizer, PP = 1 (prefetch depth 1, megatron-overlap.md 2b): one
  // parameter per bucket, so every layer has its own all-gathers.
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = moe_config(4, 2, 1, 1, 2);
  c.overlap_moe_expert_parallel_comm = true;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  c.overlap_param_gather = true;
  c.bucket_size = 1;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  const auto buckets = dp_buckets(m, c, 0, 0);
  auto ag_of = [&](const std::string& param) {
    for (std::size_t b = 0; b < buckets.size(); ++b) {
      const auto& ps = buckets[b].params;
      if (std::find(ps.begin(), ps.end(), param) != ps.end()) {
        return op_named(low.schedule, 0, "dp.chunk0.bucket" + std::to_string(b) + ".param_ag").id;
      }
    }
    FAIL("no bucket holds " << param);
    return schedule::OpId{0};
  };
  const schedule::OpId l1_qkv = ag_of("L1.qkv"), l0_qkv = ag_of("L0.qkv");
  // Layer 1's first forward compute op waits for layer 1's all-gather; nothing of layer 0 or the embedding does.
  CHECK(depends_on(op_named(low.schedule, 0, "L1.mb0.fwd.ln1"), l1_qkv));
  CHECK(depends_on(op_named(low.schedule, 0, "L0.mb0.fwd.ln1"), l0_qkv));
  for (const auto& op : low.schedule.ops) {
    if (op.rank != 0 || op.id > op_named(low.schedule, 0, "L0.mb0.fwd.residual2").id) continue;
    INFO(op.name);
    CHECK(!depends_on(op, l1_qkv));
  }
  // Layer 0's forward compute is issued before layer 1's all-gather is waited for (it was prefetched meanwhile).
  CHECK(op_named(low.schedule, 0, "L0.mb0.fwd.ln1").id < op_named(low.schedule, 0, "L1.mb0.fwd.ln1").id);
  // The output layer waits for its own all-gather, right before it.
  CHECK(depends_on(op_named(low.schedule, 0, "mb0.fwd.final_norm"), ag_of("final_norm")));
}

TEST_CASE("models::moe: gating rules for EP overlap, delay_wgrad, shared-expert overlap and dispatchers",
          "[moe][gating]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  const ModelSpec ds = moe_model("deepseek-v3", 2);
  auto ep_on = [](RunConfig c) {
    c.overlap_moe_expert_parallel_comm = true;
    return c;
  };
  // EP overlap needs EP > 1.
  CHECK_THROWS_WITH(lower(m, ep_on(moe_config(2, 1))), twinstep_contains("expert_model_parallel_size > 1"));
  // ... dispatcher alltoall or flex.
  RunConfig ag = ep_on(moe_config(2, 2));
  ag.moe_token_dispatcher_type = models::TokenDispatcher::kAllGather;
  CHECK_THROWS_WITH(lower(m, ag), twinstep_contains("alltoall or flex"));
  // ... VPP when PP > 1.
  CHECK_THROWS_WITH(lower(moe_model("qwen3-30b-a3b", 4), ep_on(moe_config(8, 2, 4, 1, 4))),
                    twinstep_contains("virtual_pipeline_model_parallel_size"));
  // ... no full recompute.
  RunConfig rc = ep_on(moe_config(2, 2));
  rc.recompute_granularity = models::RecomputeGranularity::kFull;
  rc.recompute_num_layers = 1;
  CHECK_THROWS_WITH(lower(m, rc), twinstep_contains("recompute_granularity != full"));
  // ... mutually exclusive with shared-expert overlap.
  RunConfig sh = ep_on(moe_config(2, 2));
  sh.moe_shared_expert_overlap = true;
  CHECK_THROWS_WITH(lower(ds, sh), twinstep_contains("mutually exclusive"));
  // delay_wgrad needs EP overlap.
  RunConfig dw = moe_config(2, 2);
  dw.delay_wgrad_compute = true;
  CHECK_THROWS_WITH(lower(m, dw), twinstep_contains("delay_wgrad_compute needs overlap_moe_expert_parallel_comm"));
  // Shared-expert overlap: error with allgather, silently off with flex, on its own stream with alltoall.
  RunConfig so = moe_config(2, 2);
  so.moe_shared_expert_overlap = true;
  so.moe_token_dispatcher_type = models::TokenDispatcher::kAllGather;
  CHECK_THROWS_WITH(lower(ds, so), twinstep_contains("allgather dispatcher"));
  so.moe_token_dispatcher_type = models::TokenDispatcher::kFlex;
  const Lowered fo = lower(ds, so);
  CHECK(has_warning(fo, "forces moe_shared_expert_overlap=False"));
  CHECK(count_overlap(fo.schedule, "shared_expert") == 0);
  so.moe_token_dispatcher_type = models::TokenDispatcher::kAllToAll;
  const Lowered ao = lower(ds, so);
  REQUIRE(problems(ao.schedule).empty());
  CHECK(count_overlap(ao.schedule, "shared_expert") > 0);
  CHECK(op_named(ao.schedule, 0, "L1.mb0.fwd.shared_fc1").stream ==
        *schedule::find_stream(ao.schedule, "shared_expert"));
  // Flex on a GPU DeepEP/HybridEP do not support: silent fallback to alltoall.
  RunConfig old = moe_config(2, 2);
  old.moe_token_dispatcher_type = models::TokenDispatcher::kFlex;
  old.gpu_compute_capability_major = 7;
  const Lowered fb = lower(m, old);
  CHECK(has_warning(fb, "falls back to alltoall"));
  CHECK(count_ops(fb.schedule, "flex_") == 0);
  CHECK(count_ops(fb.schedule, "moe_dispatch_a2a") > 0);
  // MoE with TP > 1 needs SP; skew within [1, EP]; EP overlap with CDMC = 1 warns.
  RunConfig tp = moe_config(4, 2);
  tp.tensor_model_parallel_size = 2;
  tp.cuda_device_max_connections = 1;
  CHECK_THROWS_WITH(lower(m, tp), twinstep_contains("needs sequence_parallel"));
  RunConfig sk = moe_config(2, 2);
  sk.moe_routing_skew = 3;
  CHECK_THROWS_WITH(lower(m, sk), twinstep_contains("exceeds expert_model_parallel_size"));
  RunConfig cd = ep_on(moe_config(2, 2));
  cd.cuda_device_max_connections = 1;
  CHECK(has_warning(lower(m, cd), "CDMC > 1 is required"));
  // ... bf16 or fp16, and at most one MTP layer.
  RunConfig f32 = ep_on(moe_config(2, 2));
  f32.dtype = schedule::DType::kFP32;
  CHECK_THROWS_WITH(lower(m, f32), twinstep_contains("bf16 or fp16"));
  ModelSpec mtp = ds;
  mtp.mtp_num_layers = 2;
  CHECK_THROWS_WITH(lower(mtp, ep_on(moe_config(2, 2))), twinstep_contains("mtp_num_layers"));
  mtp.mtp_num_layers = 1;
  CHECK(has_warning(lower(mtp, ep_on(moe_config(2, 2))), "multi-token prediction"));
  // Variants map onto the knobs.
  const RunConfig v = testing::with_overlap(moe_config(2, 2), "ep+delay_wgrad");
  CHECK(v.overlap_moe_expert_parallel_comm);
  CHECK(v.delay_wgrad_compute);
  CHECK(testing::with_overlap(moe_config(2, 2), "shared_expert").moe_shared_expert_overlap);
}

TEST_CASE("models::lower: representative ranks equal the full schedule's ranks with dp = 0", "[lower][reduce]") {
  struct Case {
    ModelSpec model;
    RunConfig cfg;
  };
  std::vector<Case> cases;
  {
    RunConfig c = config(8, 2, 2);
    c.global_batch_size = 4;
    c.use_distributed_optimizer = true;
    c.overlap_grad_reduce = true;
    c.sequence_parallel = true;
    cases.push_back({test::shrink(load_model("llama3-8b"), 4), c});
  }
  {
    RunConfig c = moe_config(8, 4);
    c.overlap_moe_expert_parallel_comm = true;
    c.use_distributed_optimizer = true;
    cases.push_back({moe_model("qwen3-30b-a3b", 2), c});
  }
  for (const auto& cs : cases) {
    const Lowered full = lower(cs.model, cs.cfg);
    LowerOptions opt;
    opt.representatives_only = true;
    const Lowered red = lower(cs.model, cs.cfg, opt);
    INFO(cs.model.name);
    REQUIRE(problems(red.schedule).empty());
    CHECK(red.schedule.meta.at("representatives") == "dp0");
    CHECK(red.schedule.communicators == full.schedule.communicators);
    CHECK(red.memory_per_rank.size() == red.schedule.ranks.size());
    const std::uint32_t tpcp = cs.cfg.tensor_model_parallel_size * cs.cfg.context_parallel_size;
    const std::uint32_t dp = cs.cfg.world_size / (tpcp * cs.cfg.pipeline_model_parallel_size);
    std::vector<schedule::RankId> want;
    for (schedule::RankId r = 0; r < cs.cfg.world_size; ++r) {
      if ((r / tpcp) % dp == 0) want.push_back(r);
    }
    CHECK(red.schedule.ranks == want);
    REQUIRE(want.size() < full.schedule.ranks.size());
    // Ops of the present ranks match, with ids renumbered.
    std::map<schedule::OpId, schedule::OpId> remap;  // full id -> reduced id
    std::vector<const schedule::Op*> kept;
    for (const auto& op : full.schedule.ops) {
      if (std::find(want.begin(), want.end(), op.rank) == want.end()) continue;
      remap[op.id] = static_cast<schedule::OpId>(kept.size());
      kept.push_back(&op);
    }
    REQUIRE(kept.size() == red.schedule.ops.size());
    for (std::size_t i = 0; i < kept.size(); ++i) {
      schedule::Op expect = *kept[i];
      expect.id = remap.at(expect.id);
      for (auto& d : expect.deps) d = remap.at(d);
      if (auto* hs = std::get_if<schedule::HostSync>(&expect.body)) hs->target = remap.at(hs->target);
      if (!(expect == red.schedule.ops[i])) {
        FAIL("op " << i << " differs: " << expect.name << " vs " << red.schedule.ops[i].name);
      }
    }
  }
}

TEST_CASE("models::moe: step FLOPs count only the active experts and match the schedule's kernels", "[moe][flops]") {
  for (const char* id : {"qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"}) {
    const ModelSpec m = moe_model(id, 4);
    RunConfig c = moe_config(2, 2);
    c.seq_length = 1024;
    const Lowered low = lower(m, c);
    REQUIRE(problems(low.schedule).empty());
    INFO(id);
    // The kernels' FLOPs (router and embedding/loss extras included) agree with 6 N_active T + attention.
    CHECK(test::total_flops(low.schedule) == Approx(low.model_flops_per_step).epsilon(0.03));
  }
  // Qwen3-30B-A3B: about 3.3 B active parameters per token (48 layers), far below its 30.5 B total.
  const ModelSpec q = load_model("qwen3-30b-a3b");
  RunConfig c = moe_config(16, 16, 1, 1, 1);
  c.seq_length = 4096;
  LowerOptions opt;
  opt.representatives_only = true;
  const Lowered low = lower(q, c, opt);
  const double tokens = 16.0 * 4096;
  const double n_active = low.model_flops_per_step / (6.0 * tokens);
  // 3.04 B active matmul params (attention + router + 8 of 128 experts per layer + output layer) plus the causal
  // attention term 3.5 * 2 * s * n_q * d_h * L / 6 = 0.94 B-equivalent at s = 4096; all 128 experts would be 30 B.
  CHECK(n_active > 3.85e9);
  CHECK(n_active < 4.1e9);
}

namespace {

/// Rank 0's host ops whose names end with `suffix`, their durations in schedule order.
std::vector<Nanos> host_ops(const schedule::Schedule& s, const std::string& suffix) {
  std::vector<Nanos> out;
  for (const auto& op : s.ops) {
    if (op.rank != 0 || !op.name.ends_with(suffix)) continue;
    out.push_back(std::get<schedule::Host>(op.body).duration_ns);
  }
  return out;
}

}  // namespace

TEST_CASE("models::moe: the alltoall dispatcher's host pieces, syncs and backward calls are emitted per layer",
          "[moe][host]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = moe_config(2, 2, 1, 1, 2);
  c.host.per_module_call_ns = 1000;
  c.host.per_kernel_launch_ns = 100;
  c.host.per_kernel_backward_ns = 10;
  c.host.backward_call_ns = 7000;
  c.host.host_sync_ns = 3000;
  c.host.moe_preprocess_ns = 20000;
  c.host.ep_backward_call_ns = 7000;
  auto bwd_kernel_ns = [](const schedule::Schedule& s) {
    Nanos total = 0;
    for (const auto& op : s.ops) {
      if (op.rank == 0 && op.name.find("host_bwd") != std::string::npos)
        total += std::get<schedule::Host>(op.body).duration_ns;
    }
    return total;
  };
  const Lowered plain = lower(m, c);
  // 2 layers x 2 micro-batches: one router, preprocess, permute, unpermute piece each; the preprocess at its measured
  // figure, the router (a module call), permute and unpermute per kernel they launch (the eager ops: moe_eager_test).
  CHECK(host_ops(plain.schedule, "host_moe_router") == std::vector<Nanos>(4, 1000 + 25 * 100));
  CHECK(host_ops(plain.schedule, "host_moe_preprocess") == std::vector<Nanos>(4, 20000));
  CHECK(host_ops(plain.schedule, "host_moe_permute") == std::vector<Nanos>(4, 12 * 100));
  CHECK(host_ops(plain.schedule, "host_moe_unpermute") == std::vector<Nanos>(4, 2 * 100));
  // The D2H split-size sync once per MoE layer forward, each followed by the framework's share of the sync.
  CHECK(host_ops(plain.schedule, "moe_splits_sync_host") == std::vector<Nanos>(4, 3000));
  CHECK(ops_named(plain.schedule, 0, "moe_splits_sync").size() == 4 + 4);  // the syncs and their host ops
  // One autograd backward call per micro-batch (one model chunk).
  CHECK(host_ops(plain.schedule, "autograd_backward_call") == std::vector<Nanos>(2, 7000));
  // Backward: 10 ns per GPU op the autograd engine runs (every backward op but DP's finish_grad_sync, which Python
  // issues after the backward call).
  std::uint64_t bwd_ops = 0;
  for (const auto& op : plain.schedule.ops) {
    const bool gpu =
        !std::holds_alternative<schedule::Host>(op.body) && !std::holds_alternative<schedule::HostSync>(op.body);
    const bool bwd = op.tags.phase == schedule::Phase::kBwd || op.tags.phase == schedule::Phase::kWgrad;
    if (op.rank == 0 && gpu && bwd && !op.name.starts_with("dp.")) ++bwd_ops;
  }
  CHECK(bwd_kernel_ns(plain.schedule) == 10 * static_cast<Nanos>(bwd_ops));
  c.overlap_moe_expert_parallel_comm = true;
  const Lowered overlap = lower(m, c);
  CHECK(host_ops(overlap.schedule, "host_moe_router").size() == 4);
  CHECK(host_ops(overlap.schedule, "moe_splits_sync_host").size() == 4);
}

TEST_CASE("models::moe: an eager routing call with a measured host figure is one host op of it, not per kernel",
          "[moe][host]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);  // 128 experts
  RunConfig c = moe_config(2, 2, 1, 1, 2);
  c.host.per_module_call_ns = 1000;
  c.host.per_kernel_launch_ns = 100;
  c.host.per_kernel_backward_ns = 10;
  c.host.moe_routing_call_ns["fwd.permute_idx_select"] = {{8, 50000}};  // clamped above its one point
  c.host.moe_routing_call_ns["fwd.router_logits_topk"] = {{8, 40000}, {256, 80000}};
  c.host.moe_routing_call_ns["bwd.router"] = {{8, 300000}};
  const Lowered l = lower(m, c);
  // 2 layers x 2 micro-batches. masked_select's 4 GPU ops (count, D2H, nonzero, gather) leave the permute's count.
  CHECK(host_ops(l.schedule, "host_permute_idx_select") == std::vector<Nanos>(4, 50000));
  CHECK(host_ops(l.schedule, "host_moe_permute") == std::vector<Nanos>(4, (12 - 4) * 100));
  // Interpolated in the expert count: 40000 + (128 - 8) / (256 - 8) x 40000, truncated to ns.
  CHECK(host_ops(l.schedule, "host_router_logits_topk") == std::vector<Nanos>(4, 40000 + 19354));
  CHECK(host_ops(l.schedule, "host_moe_router") == std::vector<Nanos>(4, 1000 + (25 - 1) * 100));
  CHECK(host_ops(l.schedule, "host_router_bwd") == std::vector<Nanos>(4, 300000));
  // A call without a figure keeps the per-kernel counting.
  CHECK(host_ops(l.schedule, "host_moe_unpermute") == std::vector<Nanos>(4, 2 * 100));
  CHECK(host_ops(l.schedule, "host_permute_probs_select").empty());
}
