// Gating rules of megatron-overlap.md section 7: a silent disable is a warning (in Lowered and in the schedule) and
// the mode's ops are really absent; an assertion is a twinstep::Error naming the rule and the fix.
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::count_ops;
using twinstep::models::test::count_overlap;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;

namespace {
ModelSpec small() { return shrink(load_model("llama3-8b"), 8); }
bool has_warning(const Lowered& low, const std::string& part) {
  bool in_lowered = false, in_schedule = false;
  for (const auto& w : low.warnings) in_lowered |= w.find(part) != std::string::npos;
  for (const auto& w : low.schedule.warnings) in_schedule |= w.find(part) != std::string::npos;
  return in_lowered && in_schedule;
}
}  // namespace

TEST_CASE("models::gating: tp_comm_overlap with tp < 2 is silently off", "[gating]") {
  RunConfig c = config(2, 1, 1);
  c.global_batch_size = 2;
  c.tp_comm_overlap = true;
  Lowered low = lower(small(), c);
  CHECK(has_warning(low, "tp_comm_overlap needs tensor_model_parallel_size >= 2"));
  CHECK(count_overlap(low.schedule, "tp") == 0);
  CHECK_FALSE(schedule::find_stream(low.schedule, "tp_send").has_value());
}

TEST_CASE("models::gating: tp_comm_overlap without sequence_parallel is silently off, with it, chunked", "[gating]") {
  RunConfig c = config(2, 2, 1);
  c.global_batch_size = 2;
  c.tp_comm_overlap = true;
  Lowered off = lower(small(), c);
  CHECK(has_warning(off, "tp_comm_overlap needs sequence_parallel"));
  CHECK(count_overlap(off.schedule, "tp") == 0);
  c.sequence_parallel = true;
  Lowered on = lower(small(), c);
  CHECK(on.warnings.empty());
  CHECK(problems(on.schedule).empty());
  CHECK(count_overlap(on.schedule, "tp") > 0);
  // qkv_fprop ring exchange: t GEMM chunks, t-1 sends; proj_fprop pipelined: 4 GEMM chunks + 4 RS.
  CHECK(count_ops(on.schedule, "L0.mb0.fwd.qkv_chunk") == 2 * 2);
  CHECK(count_ops(on.schedule, "L0.mb0.fwd.qkv_ub_send") == 2 * 1);
  CHECK(count_ops(on.schedule, "L0.mb0.fwd.proj_rs") == 2 * 4);
  CHECK(count_ops(off.schedule, "L0.mb0.fwd.qkv_ag") == 0);  // no SP: input replicated, no AG
  c.tp_comm_overlap = false;
  CHECK(count_ops(lower(small(), c).schedule, "L0.mb0.fwd.qkv_ag") == 2);
}

TEST_CASE("models::gating: overlap_p2p_comm needs the interleaved schedule (silently off with VPP None)", "[gating]") {
  RunConfig c = config(4, 1, 4);
  c.global_batch_size = 8;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  Lowered low = lower(small(), c);
  CHECK(has_warning(low, "overlap_p2p_comm needs the interleaved schedule"));
  CHECK(count_overlap(low.schedule, "pp") == 0);
  c.virtual_pipeline_model_parallel_size = 2;
  Lowered on = lower(small(), c);
  CHECK(on.warnings.empty());
  CHECK(count_overlap(on.schedule, "pp") > 0);
}

TEST_CASE("models::gating: overlap_p2p_comm with batch_p2p_comm is an error", "[gating]") {
  RunConfig c = config(4, 1, 4, 1, 2);
  c.global_batch_size = 8;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = true;
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("batch_p2p_comm") && twinstep_contains("ValueError"));
}

TEST_CASE("models::gating: interleaving without P2P overlap needs pp > 2, VPP needs PP > 1", "[gating]") {
  RunConfig c = config(2, 1, 2, 1, 2);
  c.global_batch_size = 4;
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("pipeline_model_parallel_size > 2"));
  RunConfig one = config(1, 1, 1, 1, 2);
  one.global_batch_size = 2;
  CHECK_THROWS_WITH(lower(small(), one), twinstep_contains("needs pipeline_model_parallel_size > 1"));
}

TEST_CASE("models::gating: interleaved micro-batch group checks", "[gating]") {
  RunConfig c = config(4, 1, 4, 1, 2);
  c.global_batch_size = 2;  // m = 2 < p = 4
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("microbatch_group_size_per_vp_stage"));
  c.global_batch_size = 6;  // m mod p = 2 < p
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("RuntimeError"));
}

TEST_CASE("models::gating: batch_p2p_comm + batch_p2p_sync host-synchronize after each exchange", "[gating]") {
  RunConfig c = config(2, 1, 2);
  c.global_batch_size = 4;
  Lowered batched = lower(small(), c);
  CHECK(count_ops(batched.schedule, "batch_p2p_sync") > 0);
  c.batch_p2p_sync = false;
  CHECK(count_ops(lower(small(), c).schedule, "batch_p2p_sync") == 0);
  c.batch_p2p_sync = true;
  c.batch_p2p_comm = false;
  CHECK(count_ops(lower(small(), c).schedule, "batch_p2p_sync") == 0);
}

TEST_CASE("models::gating: overlap_param_gather needs the distributed optimizer and overlap_grad_reduce", "[gating]") {
  RunConfig c = config(2, 1, 1);
  c.global_batch_size = 2;
  c.overlap_param_gather = true;
  c.overlap_grad_reduce = true;
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("use_distributed_optimizer"));
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = false;
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("overlap_grad_reduce"));
  c.overlap_grad_reduce = true;
  Lowered low = lower(small(), c);
  CHECK(problems(low.schedule).empty());
  CHECK(count_ops(low.schedule, "param_ag") > 0);
  for (const auto& op : low.schedule.ops) {
    if (op.name.find("param_ag") != std::string::npos) CHECK(op.tags.overlap == "dp");
  }
}

TEST_CASE("models::gating: overlap_grad_reduce off means one blocking bucket after the backward", "[gating]") {
  RunConfig c = config(2, 1, 1);
  c.global_batch_size = 4;
  c.bucket_size = 1000000;  // ignored without overlap (bucket_size None)
  Lowered off = lower(small(), c);
  CHECK(count_ops(off.schedule, "grad_ar") == 2);
  CHECK(count_overlap(off.schedule, "dp") == 0);
  c.overlap_grad_reduce = true;
  Lowered on = lower(small(), c);
  CHECK(count_ops(on.schedule, "grad_ar") > 2);
  CHECK(count_overlap(on.schedule, "dp") > 0);
  // Dispatched during the last micro-batch's backward: the first bucket's all-reduce comes before the last
  // layer-0 wgrad of micro-batch 1.
  std::size_t first_ar = 0, last_wgrad = 0;
  for (const auto& op : on.schedule.ops) {
    if (op.rank != 0) continue;
    if (first_ar == 0 && op.name.find("grad_ar") != std::string::npos) first_ar = op.id;
    if (op.name == "L0.mb1.bwd.qkv_wgrad") last_wgrad = op.id;
  }
  CHECK(first_ar < last_wgrad);
}

TEST_CASE("models::gating: DP overlap with dp x cp = 1 is off with a warning", "[gating]") {
  RunConfig c = config(2, 2, 1);
  c.global_batch_size = 1;
  c.overlap_grad_reduce = true;
  Lowered low = lower(small(), c);
  CHECK(has_warning(low, "nothing to reduce"));
  CHECK(count_overlap(low.schedule, "dp") == 0);
}

TEST_CASE("models::gating: TP or CP > 1 on Hopper needs CUDA_DEVICE_MAX_CONNECTIONS=1", "[gating]") {
  RunConfig c = config(2, 2, 1);
  c.global_batch_size = 1;
  c.cuda_device_max_connections = 8;
  CHECK_THROWS_WITH(lower(small(), c),
                    twinstep_contains("CUDA_DEVICE_MAX_CONNECTIONS=1") && twinstep_contains("--cdmc 1"));
  c.gpu_compute_capability_major = 10;  // Blackwell lifts it
  CHECK_NOTHROW(lower(small(), c));
}

TEST_CASE("models::gating: CP a2a needs heads divisible by cp, a2a+p2p needs hierarchical sizes", "[gating]") {
  RunConfig c = config(8, 1, 1, 8);
  c.global_batch_size = 1;
  c.cp_comm_type = models::CpCommType::kA2a;
  ModelSpec m = small();
  m.num_query_groups = 4;  // 4 KV groups cannot be split over 8 CP ranks
  CHECK_THROWS_WITH(lower(m, c), twinstep_contains("cp_comm_type a2a needs"));
  CHECK_NOTHROW(lower(small(), c));  // 32 heads, 8 groups: fine
  RunConfig d = config(2, 1, 1, 2);
  d.global_batch_size = 1;
  d.cp_comm_type = models::CpCommType::kA2aP2p;
  CHECK_THROWS_WITH(lower(small(), d), twinstep_contains("hierarchical_context_parallel_sizes"));
}

TEST_CASE("models::gating: CP p2p overlaps the KV ring with attention, all_gather does not", "[gating]") {
  RunConfig c = config(4, 1, 1, 4);
  c.global_batch_size = 1;
  Lowered p2p = lower(small(), c);
  CHECK(count_overlap(p2p.schedule, "cp") > 0);
  // forward: c-1 KV sends per layer; backward: c sends (KV, KV+dKV, ..., dKV).
  CHECK(count_ops(p2p.schedule, "L0.mb0.fwd.attn_kv_send") == 4 * 3);
  CHECK(count_ops(p2p.schedule, "L0.mb0.bwd.attn_bwd_send") == 4 * 4);
  c.cp_comm_type = models::CpCommType::kAllGather;
  Lowered ag = lower(small(), c);
  CHECK(count_overlap(ag.schedule, "cp") == 0);
  CHECK(count_ops(ag.schedule, "L0.mb0.fwd.attn_kv_ag") == 4);
}

TEST_CASE("models::gating: expert parallelism needs an MoE model", "[gating]") {
  RunConfig c = config(4, 1, 1);
  c.global_batch_size = 4;
  c.expert_model_parallel_size = 2;
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("has no MoE layers"));
  c.expert_model_parallel_size = 1;
  c.overlap_moe_expert_parallel_comm = true;
  CHECK(has_warning(lower(small(), c), "no effect on a dense model"));
}

TEST_CASE("models::gating: divisibility errors name the field and the fix", "[gating]") {
  RunConfig c = config(3, 2, 1);
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("world_size 3"));
  RunConfig g = config(2, 1, 1);
  g.global_batch_size = 3;
  CHECK_THROWS_WITH(lower(small(), g), twinstep_contains("global_batch_size 3"));
  RunConfig l = config(3, 1, 3);
  l.global_batch_size = 3;
  CHECK_THROWS_WITH(lower(small(), l), twinstep_contains("num_layers 8 is not divisible"));
}

TEST_CASE("models::lowering: the TP-overlap ring exchange carries the configured transport, PP p2p stays NCCL",
          "[gating]") {
  RunConfig c = config(4, 2, 2);
  c.global_batch_size = 4;
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  // Every send/recv as (ring exchange?, transport, sm_count) counts.
  struct Counts {
    std::size_t ring = 0, ring_with = 0, other = 0, other_nccl = 0;
  };
  auto counts = [&](schedule::Transport want, std::uint32_t sms) {
    const Lowered low = lower(small(), c);
    REQUIRE(problems(low.schedule).empty());
    Counts n;
    for (const auto& op : low.schedule.ops) {
      const auto* s = std::get_if<schedule::Send>(&op.body);
      const auto* r = std::get_if<schedule::Recv>(&op.body);
      if (s == nullptr && r == nullptr) continue;
      const schedule::Transport t = s != nullptr ? s->transport : r->transport;
      const std::uint32_t k = s != nullptr ? s->sm_count : r->sm_count;
      if (op.name.find("_ub_") != std::string::npos) {
        ++n.ring;
        n.ring_with += t == want && k == sms ? 1 : 0;
      } else {
        ++n.other;
        n.other_nccl += t == schedule::Transport::kNccl && k == 0 ? 1 : 0;
      }
    }
    return n;
  };
  // Default: Transformer Engine's ring_exchange with use_ce (copy engine).
  const Counts ce = counts(schedule::Transport::kCopyEngine, 0);
  // Per rank, micro-batch and layer: qkv/fc1 fprop and proj/fc2 dgrad rings, 1 send + 1 recv each at TP2.
  CHECK(ce.ring == std::size_t{4} * 4 * 4 * 2 * (small().num_layers / 2));  // ranks, micro-batches, sites, s+r
  CHECK(ce.ring_with == ce.ring);
  CHECK(ce.other > 0);  // pipeline p2p
  CHECK(ce.other_nccl == ce.other);
  c.tp_comm_overlap_ring_exchange_transport = schedule::Transport::kSmKernel;
  c.tp_comm_overlap_ring_exchange_num_sm = 3;
  const Counts sk = counts(schedule::Transport::kSmKernel, 3);
  CHECK(sk.ring_with == sk.ring);
  CHECK(sk.other_nccl == sk.other);
  c.tp_comm_overlap_ring_exchange_transport = schedule::Transport::kNccl;
  const Counts nc = counts(schedule::Transport::kNccl, 0);
  CHECK(nc.ring_with == nc.ring);
  // sm_kernel without SMs is refused, naming the knob.
  c.tp_comm_overlap_ring_exchange_transport = schedule::Transport::kSmKernel;
  c.tp_comm_overlap_ring_exchange_num_sm = 0;
  CHECK_THROWS_WITH(lower(small(), c), twinstep_contains("tp_comm_overlap_ring_exchange_num_sm"));
}

TEST_CASE("models::gating: a sequence past the model's max_position_embeddings is lowered with a warning", "[gating]") {
  RunConfig c = config(1, 1, 1);
  c.global_batch_size = 1;
  ModelSpec m = small();  // llama3-8b: RoPE, max_position_embeddings 8192
  REQUIRE(m.max_position_embeddings == 8192);
  c.seq_length = 8192;
  CHECK_FALSE(has_warning(lower(m, c), "max_position_embeddings"));
  c.seq_length = 16384;
  const Lowered longer = lower(m, c);
  CHECK(has_warning(longer, "seq_length 16384 exceeds llama3-8b's max_position_embeddings 8192"));
  CHECK(has_warning(longer, "--seq 8192 or less"));
  CHECK_FALSE(has_warning(longer, "learned position table"));
  // A learned position table (GPT-3, 2048 rows) keeps its size, and the warning says so.
  c.seq_length = 4096;
  const Lowered gpt = lower(shrink(load_model("gpt3-175b"), 2), c);
  CHECK(has_warning(gpt, "the learned position table keeps its 2048 rows here"));
  // A model file without the field (0) has no context to check against.
  m.max_position_embeddings = 0;
  CHECK_FALSE(has_warning(lower(m, c), "max_position_embeddings"));
}
