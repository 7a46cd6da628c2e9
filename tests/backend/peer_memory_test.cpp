// Peer-mapped transfers without a GPU (backend/peer_memory.hpp): the layout of every rank's flags and receive slots
// (by hand and on a lowered TP4 ring exchange), which ranks can map each other, the fallback to NCCL send/recv and
// what the trace's context then says, and the memory-handle encoding of the start-up exchange.
#include "backend/peer_memory.hpp"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "models/lower.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

namespace sch = twinstep::schedule;
using namespace twinstep::backend;

namespace {

void add(sch::Schedule& s, sch::RankId rank, sch::Body body) {
  sch::Op op;
  op.id = static_cast<sch::OpId>(s.ops.size());
  op.rank = rank;
  op.name = "op" + std::to_string(op.id);
  op.body = std::move(body);
  s.ops.push_back(std::move(op));
}

constexpr auto kCe = sch::Transport::kCopyEngine;
constexpr auto kSm = sch::Transport::kSmKernel;

/// Every rank's flags and slots lie inside its allocation without overlapping; slots are aligned and hold their
/// link's largest message.
void check_disjoint(const sch::Schedule& s, const PeerLayout& layout) {
  struct Span {
    std::uint64_t begin, end;
  };
  std::vector<std::vector<Span>> spans(layout.rank_bytes.size());
  for (const auto& l : layout.links) {
    spans[l.dst].push_back({l.ready_offset, l.ready_offset + 4ull * l.slots});
    spans[l.src].push_back({l.credit_offset, l.credit_offset + 4ull * l.slots});
    spans[l.dst].push_back({l.data_offset, l.data_offset + l.slots * l.slot_bytes});
    CHECK(l.data_offset % kPeerSlotAlign == 0);
    CHECK(l.slot_bytes % kPeerSlotAlign == 0);
    CHECK(l.slots >= 1);
    CHECK(l.slots <= kPeerSlots);
  }
  for (std::size_t r = 0; r < spans.size(); ++r) {
    auto& v = spans[r];
    std::sort(v.begin(), v.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
    for (std::size_t i = 0; i < v.size(); ++i) {
      INFO("rank " << r << " span " << i);
      CHECK(v[i].end <= layout.rank_bytes[r]);
      if (i > 0) CHECK(v[i - 1].end <= v[i].begin);
    }
  }
  for (const auto& op : s.ops) {
    const std::uint32_t li = layout.link_of_op[op.id];
    if (li == kNoLink) continue;
    const PeerLink& l = layout.links[li];
    if (const auto* snd = std::get_if<sch::Send>(&op.body)) {
      CHECK(l.src == op.rank);
      CHECK(l.dst == snd->peer);
      CHECK(snd->bytes <= l.slot_bytes);
    } else {
      const auto& rcv = std::get<sch::Recv>(op.body);
      CHECK(l.dst == op.rank);
      CHECK(l.src == rcv.peer);
      CHECK(rcv.bytes <= l.slot_bytes);
    }
  }
}

}  // namespace

TEST_CASE("backend::peer_memory: a link per (comm, sender, receiver, tag, transport), flags first, then slots",
          "[backend]") {
  sch::Schedule s;
  s.world_size = 3;
  s.ranks = {0, 1, 2};
  add(s, 0, sch::Send{0, 1, 100, 0, kCe});  // link 0: 0 -> 1 tag 0, two messages: two slots of the larger
  add(s, 1, sch::Recv{0, 0, 100, 0, kCe});
  add(s, 0, sch::Send{0, 1, 5000, 0, kCe});
  add(s, 1, sch::Recv{0, 0, 5000, 0, kCe});
  add(s, 0, sch::Send{0, 1, 64, 1, kCe});  // link 1: tag 1, one message: one slot
  add(s, 1, sch::Recv{0, 0, 64, 1, kCe});
  add(s, 2, sch::Send{0, 0, 50, 0, kSm, 2});  // link 2: 2 -> 0 sm_kernel
  add(s, 0, sch::Recv{0, 2, 50, 0, kSm, 2});
  add(s, 0, sch::Recv{1, 1, 1000, 0});  // NCCL (PP): no link
  add(s, 1, sch::Send{1, 0, 1000, 0});
  const PeerLayout layout = plan_peer_layout(s);
  REQUIRE(layout.links.size() == 3);
  const auto& l0 = layout.links[0];
  CHECK(l0 == PeerLink{0, 0, 1, 0, kCe, 8192, 2, 4096, 0, 0});
  // ready flags at the receiver, credits at the sender, each after the flags of earlier links on that rank
  CHECK(layout.links[1] == PeerLink{0, 0, 1, 1, kCe, 4096, 1, 4096 + 2 * 8192, 8, 8});
  CHECK(layout.links[2] == PeerLink{0, 2, 0, 0, kSm, 4096, 1, 4096, 12, 0});
  CHECK(layout.rank_bytes == std::vector<std::uint64_t>{4096 + 4096, 4096 + 2 * 8192 + 4096, 4096});
  CHECK(layout.link_of_op == std::vector<std::uint32_t>{0, 0, 0, 0, 1, 1, 2, 2, kNoLink, kNoLink});
  check_disjoint(s, layout);
  CHECK_FALSE(uses_nccl([&] {
    auto only_peer = s;
    only_peer.ops.resize(8);
    return only_peer;
  }()));
  CHECK(uses_nccl(s));  // the PP pair

  sch::Schedule none;
  add(none, 0, sch::Send{0, 1, 8, 0});
  CHECK(plan_peer_layout(none).empty());
}

TEST_CASE("backend::peer_memory: a lowered TP4 ring exchange: one link per ring direction, double-buffered",
          "[backend]") {
  namespace mt = twinstep::models::test;
  twinstep::models::RunConfig c = mt::config(4, 4, 1);
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  c.global_batch_size = 1;
  const sch::Schedule s = twinstep::models::lower(mt::shrink(twinstep::models::load_model("llama3-8b"), 1), c).schedule;
  const PeerLayout layout = plan_peer_layout(s);
  // Rank r sends to r+1 and receives from r-1 (TE's ring exchange): four links of several messages each.
  REQUIRE(layout.links.size() == 4);
  std::size_t peer_ops = 0;
  for (const auto& op : s.ops) peer_ops += layout.link_of_op[op.id] != kNoLink ? 1 : 0;
  CHECK(peer_ops > 0);
  for (const auto& l : layout.links) {
    INFO(l.src << " -> " << l.dst);
    CHECK(l.dst == (l.src + 1) % 4);
    CHECK(l.transport == kCe);
    CHECK(l.slots == 2);
  }
  check_disjoint(s, layout);
  CHECK(uses_nccl(s));  // the step's other TP collectives and DP reductions stay on NCCL
}

TEST_CASE("backend::peer_memory: ranks map each other only on one host with peer access both ways", "[backend]") {
  std::vector<RankView> views(4);
  views[0] = {"a", {true, true, true, true}};
  views[1] = {"a", {true, true, false, true}};  // rank 1 cannot reach rank 2's GPU
  views[2] = {"a", {true, true, true, true}};
  views[3] = {"b", {true, true, true, true}};  // another host: its claims do not matter
  const auto reach = reach_matrix(views);
  CHECK(reach[0][1] == Reach::kMappable);
  CHECK(reach[1][0] == Reach::kMappable);
  CHECK(reach[0][2] == Reach::kMappable);
  CHECK(reach[1][2] == Reach::kNoPeerAccess);
  CHECK(reach[2][1] == Reach::kNoPeerAccess);  // symmetric: both sides of a pair take one transport
  CHECK(reach[0][3] == Reach::kOtherHost);
  CHECK(reach[3][0] == Reach::kOtherHost);
  CHECK(reach[3][3] == Reach::kMappable);
}

TEST_CASE("backend::peer_memory: pairs that cannot map fall back to NCCL, and the trace context says so", "[backend]") {
  sch::Schedule s;
  s.world_size = 3;
  s.ranks = {0, 1, 2};
  add(s, 0, sch::Send{0, 1, 64, 0, kCe});
  add(s, 1, sch::Recv{0, 0, 64, 0, kCe});
  add(s, 0, sch::Send{0, 2, 64, 0, kSm, 4});
  add(s, 2, sch::Recv{0, 0, 64, 0, kSm, 4});
  add(s, 1, sch::Send{0, 2, 64, 0, kCe});
  add(s, 2, sch::Recv{0, 1, 64, 0, kCe});
  std::vector<RankView> views{{"a", {true, true, true}}, {"a", {true, true, true}}, {"b", {true, true, true}}};
  std::vector<Fallback> fell;
  const sch::Schedule ran = with_fallbacks(s, reach_matrix(views), &fell);
  // 0 <-> 1 stays peer-mapped; everything with rank 2 (another host) runs on NCCL.
  CHECK(std::get<sch::Send>(ran.ops[0].body).transport == kCe);
  CHECK(std::get<sch::Recv>(ran.ops[1].body).transport == kCe);
  for (std::size_t i = 2; i < 6; ++i) {
    const auto& body = ran.ops[i].body;
    const auto t = i % 2 == 0 ? std::get<sch::Send>(body).transport : std::get<sch::Recv>(body).transport;
    const auto sms = i % 2 == 0 ? std::get<sch::Send>(body).sm_count : std::get<sch::Recv>(body).sm_count;
    CHECK(t == sch::Transport::kNccl);
    CHECK(sms == 0);
  }
  REQUIRE(fell.size() == 2);
  CHECK(fell[0].a == 0);
  CHECK(fell[0].b == 2);
  CHECK(fell[0].why == Reach::kOtherHost);
  CHECK(fell[1].a == 1);
  CHECK(fell[1].b == 2);
  CHECK_FALSE(uses_nccl(s));
  CHECK(uses_nccl(ran));
  const auto what = transports_ran(s, ran);
  REQUIRE(what.size() == 2);
  CHECK(what.at("copy_engine") == "copy_engine+nccl");
  CHECK(what.at("sm_kernel") == "nccl");
  CHECK(transport_ran_text(what) == "copy_engine:copy_engine+nccl,sm_kernel:nccl");
  const std::string note = fallback_text(fell);
  CHECK(note.find("ranks 0 and 2: on different hosts") != std::string::npos);
  CHECK(note.find("ranks 1 and 2: on different hosts") != std::string::npos);
  // The layout of what runs has only the 0 -> 1 link.
  const PeerLayout layout = plan_peer_layout(ran);
  REQUIRE(layout.links.size() == 1);
  CHECK(layout.rank_bytes[2] == 0);

  // All mappable: nothing falls back, the context names the transports alone.
  const std::vector<RankView> one_host{{"a", {true, true, true}}, {"a", {true, true, true}}, {"a", {true, true, true}}};
  const sch::Schedule same = with_fallbacks(s, reach_matrix(one_host), &fell);
  CHECK(fell.empty());
  CHECK(fallback_text(fell).empty());
  CHECK(transport_ran_text(transports_ran(s, same)) == "copy_engine,sm_kernel");
  CHECK(transports_ran(ran, ran).size() == 1);  // the NCCL ops of `ran` were not asked as another transport
}

TEST_CASE("backend::peer_memory: handles round-trip through their string encoding, a short one is refused",
          "[backend]") {
  MemHandle h;
  h.bytes = std::string(64, '\0');
  for (std::size_t i = 0; i < h.bytes.size(); ++i) h.bytes[i] = static_cast<char>(i * 7);
  h.size = (5ull << 32) + 12345;
  const std::string text = encode_handle(h);
  CHECK(text.size() == 72);
  CHECK(decode_handle(text) == h);
  CHECK(decode_handle(encode_handle(MemHandle{})) == MemHandle{});  // a rank without peer buffers
  CHECK_THROWS_AS(decode_handle(text.substr(0, 5)), twinstep::Error);
}
