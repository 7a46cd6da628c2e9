// Op names and LowerOptions::op_names: a lowering without names is the named lowering with every name empty (same
// ids, ranks, streams, deps, bodies, tags, memory), over dense and MoE layouts that reach every name-building path
// (TE userbuffer rings, CP rings and halves, P2P exchanges, DP buckets and grad hooks, recompute, EP-overlap nodes
// and held wgrads, flex); and names assembled from parts read as before (golden, from the pre-optimization build).
#include <set>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::moe_model;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;

namespace {

struct Case {
  const char* label;
  ModelSpec model;
  RunConfig cfg;
};

RunConfig moe_config(std::uint32_t world, std::uint32_t tp, std::uint32_t pp, std::uint32_t ep, std::uint32_t gbs) {
  RunConfig c = config(world, tp, pp);
  c.seq_length = 256;
  c.expert_model_parallel_size = ep;
  c.sequence_parallel = tp > 1;
  c.global_batch_size = gbs;
  return c;
}

std::vector<Case> cases() {
  const ModelSpec dense = shrink(load_model("llama3-8b"), 4);
  std::vector<Case> v;
  RunConfig c = config(16, 2, 2, 1, 2);
  c.global_batch_size = 16;
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  c.overlap_param_gather = true;
  v.push_back({"tp2 pp2 vpp2 dp4, every overlap", dense, c});
  c = config(8, 2, 2);
  c.global_batch_size = 8;
  c.sequence_parallel = true;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;  // grad hooks fire (no VPP)
  c.bucket_size = 100000000;
  v.push_back({"tp2 pp2 dp2 grad hooks", dense, c});
  c = config(8, 1, 2, 4);
  c.global_batch_size = 4;
  c.recompute_granularity = models::RecomputeGranularity::kFull;
  c.recompute_num_layers = 1;
  v.push_back({"pp2 cp4 p2p full recompute", dense, c});
  c = config(8, 2, 1, 4);
  c.global_batch_size = 2;
  c.sequence_parallel = true;
  c.cp_comm_type = models::CpCommType::kAllGather;
  c.recompute_granularity = models::RecomputeGranularity::kSelective;
  v.push_back({"tp2 cp4 all_gather selective", dense, c});
  c = config(8, 1, 1, 8);
  c.global_batch_size = 2;
  c.cp_comm_type = models::CpCommType::kA2aP2p;
  c.hierarchical_context_parallel_sizes = {2, 4};
  v.push_back({"cp8 a2a+p2p", dense, c});
  c = moe_config(32, 2, 4, 4, 32);
  c.virtual_pipeline_model_parallel_size = 2;
  c.overlap_moe_expert_parallel_comm = true;
  c.delay_wgrad_compute = true;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  c.host.ep_node_ns = 1000;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  v.push_back({"moe tp2 pp4 vpp2 ep4 ep-overlap delay-wgrad", moe_model("qwen3-30b-a3b", 8), c});
  c = moe_config(8, 2, 1, 4, 8);
  c.moe_token_dispatcher_type = models::TokenDispatcher::kFlex;
  c.moe_routing_skew = 1.5;
  v.push_back({"moe flex skew", moe_model("qwen3-30b-a3b", 2), c});
  c = moe_config(8, 2, 1, 4, 8);
  c.moe_shared_expert_overlap = true;
  v.push_back({"deepseek (MLA) shared-expert overlap", moe_model("deepseek-v3", 2), c});
  c = moe_config(8, 2, 1, 4, 8);
  c.moe_token_dispatcher_type = models::TokenDispatcher::kAllGather;
  v.push_back({"moe allgather", moe_model("qwen3-30b-a3b", 2), c});
  c = moe_config(8, 2, 1, 4, 8);
  c.recompute_granularity = models::RecomputeGranularity::kSelective;
  v.push_back({"qwen3-next (Gated DeltaNet) selective", moe_model("qwen3-next-80b-a3b", 4), c});
  return v;
}

}  // namespace

TEST_CASE("models::lower: op_names off gives the named schedule with empty names", "[lower][names]") {
  for (const auto& cs : cases()) {
    for (const bool reduced : {false, true}) {
      INFO(std::string(cs.label) + (reduced ? " / representatives, mirrored TP" : " / all ranks"));
      LowerOptions named;
      named.representatives_only = reduced;
      named.mirror_tp = reduced;
      LowerOptions unnamed = named;
      unnamed.op_names = false;
      Lowered a = lower(cs.model, cs.cfg, named);
      const Lowered b = lower(cs.model, cs.cfg, unnamed);
      if (!reduced) REQUIRE(problems(a.schedule).empty());
      REQUIRE(!a.schedule.ops.empty());
      for (auto& op : a.schedule.ops) {
        CHECK(!op.name.empty());
        op.name.clear();
      }
      for (const auto& op : b.schedule.ops) CHECK(op.name.empty());
      CHECK(a.schedule == b.schedule);
      CHECK(a.memory_per_rank.size() == b.memory_per_rank.size());
      CHECK(a.peak_memory.total_bytes() == b.peak_memory.total_bytes());
    }
  }
}

TEST_CASE("models::lower: names built from parts read as before", "[lower][names][golden]") {
  const auto all = cases();
  // Names taken from the lowering before names were assembled lazily (the same configs, rank 0).
  const std::vector<std::pair<std::size_t, std::vector<std::string>>> expected = {
      {0,
       {"L0.mb0.fwd.qkv_ub_send0", "L0.mb0.fwd.qkv_ub_recv0", "L0.mb0.fwd.qkv_chunk1", "L0.mb0.fwd.proj_rs3",
        "L0.mb0.fwd.swiglu", "L0.mb0.bwd.fc2_dgrad_ub_send0", "L0.mb0.bwd.fc2_dgrad_chunk1", "L0.mb0.bwd.fc2_wgrad",
        "L0.mb0.bwd.fc1_lnout_ag", "L0.mb0.bwd.fc1_dgrad_rs", "L0.mb0.bwd.ln2_bwd", "L0.mb0.bwd.swiglu_bwd",
        "pp.x0.send_fwd", "dp.chunk0.bucket0.param_ag", "dp.chunk1.bucket0.grad_rs", "dp.chunk1.bucket0.scale",
        "optim.adam"}},
      {1, {"L0.mb0.fwd.qkv_ag", "L0.mb0.fwd.proj_rs", "L0.mb0.bwd.qkv_dgrad_rs", "L0.mb0.bwd.ln1_bwd"}},
      {2,
       {"L0.mb0.fwd.attn_kv_send0", "L0.mb0.fwd.attn_kv_recv2", "L0.mb0.fwd.attn_step0", "L0.mb0.fwd.attn_step3",
        "L0.mb0.fwd.attn_correction1", "L0.mb0.bwd.attn_bwd_send0", "L0.mb0.bwd.attn_bwd_step2",
        "L0.mb0.recompute.attn_step1"}},
      {3,
       {"L0.mb0.fwd.attn_half1_prefix", "L0.mb0.fwd.attn_half0_diag", "L0.mb0.bwd.attn_bwd_half1_prefix",
        "L0.mb0.recompute.attn_half1_diag", "L0.mb0.bwd.attn_bwd_dkv_rs"}},
      {4, {"L0.mb0.fwd.attn_q_a2a", "L0.mb0.fwd.attn_kv_send0", "L0.mb0.bwd.attn_bwd_dv_a2a"}},
      {5,
       {"L0.mb0.fwd.node_A", "L0.mb0.fwd.node_D", "L0.mb0.bwd.node_WM", "L0.mb0.bwd.experts_fc1_wgrad",
        "L0.mb0.fwd.moe_dispatch_a2a", "L0.mb0.fwd.moe_splits_d2h"}},
      {6, {"L0.mb0.fwd.flex_notify", "L0.mb0.fwd.flex_dispatch_a2a", "L0.mb0.bwd.flex_combine_bwd"}},
      {7,
       {"L1.mb0.fwd.shared_ag", "L1.mb0.fwd.shared_fc1", "L1.mb0.fwd.shared_rs", "L1.mb0.fwd.mla_latent_ag",
        "L1.mb0.bwd.kv_up_wgrad", "L1.mb0.bwd.q_down_dgrad"}},
      {8, {"L0.mb0.fwd.moe_counts_d2h", "L0.mb0.fwd.moe_counts_sync", "L0.mb0.bwd.moe_hidden_grad_rs"}},
      {9,
       {"L0.mb0.fwd.in_proj_ag", "L0.mb0.fwd.gdn_scan_scores", "L0.mb0.bwd.gdn_scan_bwd_state",
        "L0.mb0.bwd.out_proj_dgrad_ag", "L0.mb0.bwd.in_proj_lnout_ag", "L0.mb0.bwd.gdn_conv1d_bwd"}},
  };
  for (const auto& [index, names] : expected) {
    const Case& cs = all.at(index);
    INFO(cs.label);
    const Lowered low = lower(cs.model, cs.cfg);
    std::set<std::string> rank0;
    for (const auto& op : low.schedule.ops) {
      if (op.rank == 0) rank0.insert(op.name);
    }
    for (const auto& n : names) {
      INFO(n);
      CHECK(rank0.count(n) == 1);
    }
  }
}
