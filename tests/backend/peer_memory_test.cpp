// Peer-mapped transfers without a GPU (backend/peer_memory.hpp): the layout of every rank's flags and receive slots
// (by hand and on a lowered TP4 ring exchange), which ranks can map each other, the fallback to NCCL send/recv and
// what the trace's context then says, and the memory-handle encoding of the start-up exchange.
#include "backend/peer_memory.hpp"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "models/lower.hpp"
#include "schedule/builder.hpp"
#include "schedule/matching.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

namespace sch = twinstep::schedule;
using namespace twinstep::backend;
using twinstep::schedule::ScheduleBuilder;

namespace {

/// Appends an op named op<id> on stream `stream`.
void add(ScheduleBuilder& b, sch::RankId rank, sch::Body body, sch::StreamId stream = 0) {
  b.add(rank, "op" + std::to_string(b.next_id()), stream, std::move(body));
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

/// The peer-mapped protocol of peer_memory.hpp run on the host over a schedule: flags and slots as maps, each
/// rank's streams as FIFOs of its ops, an op starting once its deps are done; a send is [wait credit] copy (its op id
/// into the slot) raise ready, a recv is wait ready, read the slot, return the credit; other ops finish at once.
/// Streams are advanced greedily (each as far as it can go, in `reverse` order or not: senders run ahead as far as
/// the credits let them). Counters, flags and slots persist across steps, as in a run.
class HostProtocol {
 public:
  HostProtocol(const sch::Schedule& s, bool reverse)
      : s_(s),
        layout_(plan_peer_layout(s)),
        reverse_(reverse),
        sent_(layout_.links.size()),
        received_(layout_.links.size()) {}

  /// One step; false (and `stuck` names an op) if no stream can move before all are done.
  bool step(std::string& stuck) {
    struct Stream {
      std::vector<sch::OpId> ops;
      std::size_t next = 0;
      int phase = 0;  // within the op at `next`: 0 not started
    };
    std::map<std::pair<sch::RankId, sch::StreamId>, Stream> streams;
    for (const auto& op : s_.ops) streams[{op.rank, op.stream}].ops.push_back(op.id);
    std::vector<bool> done(s_.ops.size(), false);
    std::vector<std::uint64_t> msg(s_.ops.size(), 0);  // each peer op's message index on its link
    for (const auto& op : s_.ops) {                    // issue order: the counters advance in program order
      const std::uint32_t li = layout_.link_of_op[op.id];
      if (li != kNoLink) msg[op.id] = std::holds_alternative<sch::Send>(op.body) ? sent_[li]++ : received_[li]++;
    }
    std::vector<Stream*> order;
    for (auto& [key, st] : streams) order.push_back(&st);
    if (reverse_) std::reverse(order.begin(), order.end());
    bool moved = true;
    while (moved) {
      moved = false;
      for (Stream* st : order) {
        while (st->next < st->ops.size() && advance(st->ops[st->next], st->phase, done, msg)) {
          moved = true;
          if (st->phase < 0) {
            done[st->ops[st->next]] = true;
            ++st->next;
            st->phase = 0;
          }
        }
      }
    }
    for (auto& [key, st] : streams) {
      if (st.next < st.ops.size()) {
        stuck = s_.ops[st.ops[st.next]].name + " on rank " + std::to_string(key.first);
        return false;
      }
    }
    return true;
  }
  /// Per recv op: the send op whose bytes it read (last step).
  std::map<sch::OpId, sch::OpId> read;

 private:
  static bool reached(std::uint32_t flag, std::uint32_t target) {
    return static_cast<std::int32_t>(flag - target) >= 0;
  }

  /// Runs the op's next micro-step if it can: true if it did (phase -1 when the op is finished).
  bool advance(sch::OpId id, int& phase, const std::vector<bool>& done, const std::vector<std::uint64_t>& msg) {
    const sch::Op& op = s_.ops[id];
    if (phase == 0) {
      for (auto d : op.deps) {
        if (!done[d]) return false;
      }
    }
    const std::uint32_t li = layout_.link_of_op[id];
    if (li == kNoLink) {
      phase = -1;
      return true;
    }
    const PeerLink& l = layout_.links[li];
    if (std::holds_alternative<sch::Send>(op.body)) {
      const PeerSendStep st = send_step(l, msg[id]);
      if (st.wait_credit && !reached(flags_[{l.src, l.credit_offset + 4 * st.slot}], st.credit_at_least)) return false;
      slots_[{l.dst, l.data_offset + st.slot * l.slot_bytes}] = id;
      flags_[{l.dst, l.ready_offset + 4 * st.slot}] = st.ready_value;
    } else {
      const PeerRecvStep st = recv_step(l, msg[id]);
      if (!reached(flags_[{l.dst, l.ready_offset + 4 * st.slot}], st.ready_at_least)) return false;
      read[id] = slots_[{l.dst, l.data_offset + st.slot * l.slot_bytes}];
      flags_[{l.src, l.credit_offset + 4 * st.slot}] = st.credit_value;
    }
    phase = -1;
    return true;
  }

  const sch::Schedule& s_;
  PeerLayout layout_;
  bool reverse_;
  std::vector<std::uint64_t> sent_, received_;
  std::map<std::pair<sch::RankId, std::uint64_t>, std::uint32_t> flags_;
  std::map<std::pair<sch::RankId, std::uint64_t>, sch::OpId> slots_;
};

/// Runs `steps` steps of the protocol both ways round and checks that every recv read its own send's bytes (the
/// IR's matching) and nothing got stuck.
void check_protocol(const sch::Schedule& s, int steps) {
  const sch::Matching m = sch::match(s);
  for (bool reverse : {false, true}) {
    HostProtocol run(s, reverse);
    for (int step = 0; step < steps; ++step) {
      std::string stuck;
      INFO("step " << step << (reverse ? ", streams in reverse order" : ""));
      REQUIRE(run.step(stuck));
      INFO("stuck at " << stuck);
      std::size_t wrong = 0;
      for (const auto& [recv, send] : run.read) wrong += m.partner[recv] == send ? 0 : 1;
      CHECK(wrong == 0);
      CHECK_FALSE(run.read.empty());
    }
  }
}

}  // namespace

TEST_CASE("backend::peer_memory: a link per (comm, sender, receiver, tag, transport), flags first, then slots",
          "[backend]") {
  ScheduleBuilder sb(3, {});
  auto& s = sb.schedule();
  add(sb, 0, sch::Send{0, 1, 100, 0, kCe});  // link 0: 0 -> 1 tag 0, two messages: two slots of the larger
  add(sb, 1, sch::Recv{0, 0, 100, 0, kCe});
  add(sb, 0, sch::Send{0, 1, 5000, 0, kCe});
  add(sb, 1, sch::Recv{0, 0, 5000, 0, kCe});
  add(sb, 0, sch::Send{0, 1, 64, 1, kCe});  // link 1: tag 1, one message: one slot
  add(sb, 1, sch::Recv{0, 0, 64, 1, kCe});
  add(sb, 2, sch::Send{0, 0, 50, 0, kSm, 2});  // link 2: 2 -> 0 sm_kernel
  add(sb, 0, sch::Recv{0, 2, 50, 0, kSm, 2});
  add(sb, 0, sch::Recv{1, 1, 1000, 0});  // NCCL (PP): no link
  add(sb, 1, sch::Send{1, 0, 1000, 0});
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

  ScheduleBuilder none(0, {});
  add(none, 0, sch::Send{0, 1, 8, 0});
  CHECK(plan_peer_layout(none.schedule()).empty());
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

TEST_CASE("backend::peer_memory: the slot protocol delivers every message and never overwrites an unread one",
          "[backend]") {
  // Two ranks, 12 rounds each way with no deps: the senders run ahead until the credits stop them (two slots).
  ScheduleBuilder eager_b(2, {{"tx", 0}, {"rx", 0}});
  for (int k = 0; k < 12; ++k) {
    for (sch::RankId r = 0; r < 2; ++r) {
      add(eager_b, r, sch::Send{0, 1 - r, 1000, 0, kCe}, 0);
      add(eager_b, r, sch::Recv{0, 1 - r, 1000, 0, kCe}, 1);
    }
  }
  const sch::Schedule& eager = eager_b.schedule();
  check_protocol(eager, 3);
  // Without the credit wait a slot would be overwritten before its recv read it (check_protocol then fails).
  const PeerLink link = plan_peer_layout(eager).links[0];
  CHECK(send_step(link, 2).wait_credit);
  CHECK(send_step(link, 2).credit_at_least == 1);  // message 0 received
  CHECK_FALSE(send_step(link, 1).wait_credit);
  CHECK(recv_step(link, 5).slot == 1);
  CHECK(recv_step(link, 5).ready_at_least == 6);
  // The lowered TP4 step: the ring exchange with its deps (each send after the previous recv) and the GEMMs between;
  // every other op finishes at once.
  namespace mt = twinstep::models::test;
  twinstep::models::RunConfig c = mt::config(4, 4, 1);
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  c.global_batch_size = 1;
  check_protocol(twinstep::models::lower(mt::shrink(twinstep::models::load_model("llama3-8b"), 1), c).schedule, 2);
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
  ScheduleBuilder sb(3, {});
  auto& s = sb.schedule();
  add(sb, 0, sch::Send{0, 1, 64, 0, kCe});
  add(sb, 1, sch::Recv{0, 0, 64, 0, kCe});
  add(sb, 0, sch::Send{0, 2, 64, 0, kSm, 4});
  add(sb, 2, sch::Recv{0, 0, 64, 0, kSm, 4});
  add(sb, 1, sch::Send{0, 2, 64, 0, kCe});
  add(sb, 2, sch::Recv{0, 1, 64, 0, kCe});
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
