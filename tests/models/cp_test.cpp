// Hierarchical context parallelism (cp_comm_type "a2a+p2p", megatron-overlap.md section 5): Ulysses a2a of Q, K, V
// inside the inner group, the TE KV ring across the outer group, a2a of the output back; groups as Megatron's
// create_hierarchical_groups builds them. Exact op counts, peers and bytes worked out by hand from the reference.
#include <map>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::count_ops;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;

namespace {

// llama3-8b: h 4096, 32 heads, 8 KV groups, head dim 128; 2 layers keep it small.
ModelSpec two_layers() { return shrink(load_model("llama3-8b"), 2); }

RunConfig hierarchical(std::uint32_t world, std::uint32_t cp, std::uint32_t inner, std::uint32_t outer) {
  RunConfig c = config(world, 1, 1, cp);
  c.global_batch_size = world / cp;
  c.cp_comm_type = models::CpCommType::kA2aP2p;
  c.hierarchical_context_parallel_sizes = {inner, outer};
  return c;
}

const schedule::Op& op_named(const schedule::Schedule& s, schedule::RankId rank, const std::string& name) {
  for (const auto& op : s.ops) {
    if (op.rank == rank && op.name == name) return op;
  }
  FAIL("no op " << name << " on rank " << rank);
  return s.ops.front();
}

std::size_t count_rank(const schedule::Schedule& s, schedule::RankId rank, const std::string& part) {
  std::size_t n = 0;
  for (const auto& op : s.ops) n += op.rank == rank && op.name.find(part) != std::string::npos ? 1 : 0;
  return n;
}

const schedule::Attention& attention_of(const schedule::Op& op) {
  return std::get<schedule::Attention>(std::get<schedule::Compute>(op.body).kernel);
}

}  // namespace

TEST_CASE("models::cp: a2a+p2p lowers to a2a inside the inner group and a KV ring across the outer", "[cp]") {
  // cp 4 = a2a 2 x p2p 2; seq 1024: 256 tokens per CP rank, 512 per p2p-ring rank after the a2a.
  const RunConfig c = hierarchical(4, 4, 2, 2);
  const Lowered low = lower(two_layers(), c);
  const schedule::Schedule& s = low.schedule;
  REQUIRE(problems(s).empty());
  constexpr std::uint64_t kB = 2, kDh = 128, kHq = 32, kHkv = 8, kSloc = 1024 / 4;

  // Communicators: inner {0,1}, {2,3} (consecutive CP ranks), outer {0,2}, {1,3} (stride = inner size).
  std::map<std::string, std::vector<schedule::RankId>> comms;
  for (const auto& comm : s.communicators) {
    if (comm.kind == "cp") comms[comm.name] = comm.members;
  }
  CHECK(comms == std::map<std::string, std::vector<schedule::RankId>>{
                     {"cp_a2a.0", {0, 1}}, {"cp_a2a.1", {2, 3}}, {"cp_p2p.0", {0, 2}}, {"cp_p2p.1", {1, 3}}});

  for (schedule::RankId r = 0; r < 4; ++r) {
    // Per layer and micro-batch: forward q, k, v, out a2a; backward dO, dQ, dK, dV a2a.
    CHECK(count_rank(s, r, "_a2a") == 2 * 8);
    // Ring of 2: forward 1 KV send, backward 2 (KV, then dKV); as many recvs.
    CHECK(count_rank(s, r, "attn_kv_send") == 2 * 1);
    CHECK(count_rank(s, r, "attn_kv_recv") == 2 * 1);
    CHECK(count_rank(s, r, "attn_bwd_send") == 2 * 2);
    CHECK(count_rank(s, r, "attn_bwd_recv") == 2 * 2);
    CHECK(count_rank(s, r, "fwd.attn_step") == 2 * 2);
    CHECK(count_rank(s, r, "attn_bwd_step") == 2 * 2);
    CHECK(count_rank(s, r, "attn_correction") == 2 * 1);

    const auto& q = std::get<schedule::Collective>(op_named(s, r, "L0.mb0.fwd.attn_q_a2a").body);
    CHECK(q.kind == schedule::CollectiveKind::kAllToAll);
    CHECK(s.communicators[q.comm].name == "cp_a2a." + std::to_string(r / 2));
    CHECK(q.bytes == kSloc * kHq * kDh * kB);
    CHECK(q.send_bytes == std::vector<std::uint64_t>(2, kSloc * kHq * kDh * kB / 2));
    const auto& kk = std::get<schedule::Collective>(op_named(s, r, "L1.mb0.fwd.attn_k_a2a").body);
    CHECK(kk.bytes == kSloc * kHkv * kDh * kB);
    const auto& dv = std::get<schedule::Collective>(op_named(s, r, "L1.mb0.bwd.attn_bwd_dv_a2a").body);
    CHECK(dv.bytes == kSloc * kHkv * kDh * kB);

    // KV block after the a2a: 2 * (s / outer) * (groups / inner) * d_h * B = the plain-p2p block of cp 4.
    const std::uint64_t kv = 2 * (1024 / 2) * (kHkv / 2) * kDh * kB;
    CHECK(kv == 2 * kSloc * kHkv * kDh * kB);
    const schedule::RankId peer = (r + 2) % 4;  // same inner position, other outer position
    const auto& snd = std::get<schedule::Send>(op_named(s, r, "L0.mb0.fwd.attn_kv_send0").body);
    CHECK(snd.bytes == kv);
    CHECK(snd.peer == peer);
    CHECK(s.communicators[snd.comm].name == "cp_p2p." + std::to_string(r % 2));
    CHECK(std::get<schedule::Send>(op_named(s, r, "L0.mb0.bwd.attn_bwd_send0").body).bytes == kv);
    CHECK(std::get<schedule::Send>(op_named(s, r, "L0.mb0.bwd.attn_bwd_send1").body).bytes == kv);

    // Head-sharded attention over the ring's 512 tokens: diagonal step, then lower (outer position 1) or upper
    // triangle (outer position 0).
    const auto& a0 = attention_of(op_named(s, r, "L0.mb0.fwd.attn_step0"));
    CHECK(a0.heads_q == kHq / 2);
    CHECK(a0.heads_kv == kHkv / 2);
    CHECK(a0.seq_q == 512);
    CHECK(a0.seq_kv == 512);
    CHECK(a0.causal);
    const auto& a1 = attention_of(op_named(s, r, "L0.mb0.fwd.attn_step1"));
    CHECK_FALSE(a1.causal);
    CHECK(a1.seq_q == (r / 2 == 1 ? 512u : 256u));
    CHECK(a1.seq_kv == (r / 2 == 1 ? 256u : 512u));
  }
  // The output a2a waits for the last attention step (through the compute stream).
  const auto& out = op_named(s, 0, "L0.mb0.fwd.attn_out_a2a");
  const auto& corr = op_named(s, 0, "L0.mb0.fwd.attn_correction1");
  CHECK(std::find(out.deps.begin(), out.deps.end(), corr.id) != out.deps.end());
  // dK / dV a2a wait for the last dKV block of the ring.
  const auto& last_recv = op_named(s, 0, "L0.mb0.bwd.attn_bwd_recv1");
  const auto& dk = op_named(s, 0, "L0.mb0.bwd.attn_bwd_dk_a2a");
  CHECK(std::find(dk.deps.begin(), dk.deps.end(), last_recv.id) != dk.deps.end());
}

TEST_CASE("models::cp: a2a+p2p layouts validate, degenerate levels drop their exchanges", "[cp]") {
  struct Case {
    std::uint32_t world, tp, cp, inner, outer;
  };
  for (const Case& k : {Case{8, 1, 8, 2, 4}, Case{8, 1, 8, 4, 2}, Case{8, 2, 4, 2, 2}, Case{8, 1, 4, 4, 1},
                        Case{8, 1, 4, 1, 4}, Case{16, 2, 4, 2, 2}}) {
    RunConfig c = hierarchical(k.world, k.cp, k.inner, k.outer);
    c.tensor_model_parallel_size = k.tp;
    c.sequence_parallel = k.tp > 1;
    c.global_batch_size = k.world / (k.tp * k.cp);
    INFO("world " << k.world << " tp " << k.tp << " cp " << k.cp << " = " << k.inner << " x " << k.outer);
    const Lowered low = lower(two_layers(), c);
    CHECK(problems(low.schedule).empty());
    // An a2a level of 1 has no a2a; a ring of 1 has no sends.
    CHECK((count_ops(low.schedule, "_a2a") == 0) == (k.inner == 1));
    CHECK((count_ops(low.schedule, "attn_kv_send") == 0) == (k.outer == 1));
  }
}

TEST_CASE("models::cp: a2a+p2p gating: two levels whose product is cp, heads divisible by the a2a size", "[cp]") {
  RunConfig c = hierarchical(4, 4, 2, 2);
  c.hierarchical_context_parallel_sizes = {2, 3};
  CHECK_THROWS_WITH(lower(two_layers(), c), twinstep_contains("product is context_parallel_size"));
  c.hierarchical_context_parallel_sizes = {2, 2, 1};
  CHECK_THROWS_WITH(lower(two_layers(), c), twinstep_contains("uses two levels"));
  RunConfig h = hierarchical(16, 16, 16, 1);
  h.seq_length = 4096;
  CHECK_THROWS_WITH(lower(two_layers(), h), twinstep_contains("divisible by the a2a size"));  // 8 KV groups
}
