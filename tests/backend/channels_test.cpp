// The channel plan without a GPU: NCCL communicators per stream for collectives and per direction for send/recv,
// a channel per tag where tags reorder a direction, the plan of a lowered TP2/PP2/EP2 step against what
// schedule::match says, and the grouping of channel creation into ncclCommSplit rounds.
#include "backend/channels.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "schedule/builder.hpp"
#include "schedule/matching.hpp"
#include "tests/backend/ring_exchange.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::backend::test::ring_exchange;
using twinstep::schedule::ScheduleBuilder;

namespace {

/// One training step of a 2-layer Qwen3-30B-A3B (MoE) on 8 GPUs: TP 2, PP 2, EP 2 (DP 2), 4 micro-batches.
sch::Schedule lowered_tp2_pp2_ep2() {
  namespace mt = twinstep::models::test;
  twinstep::models::RunConfig c = mt::config(8, 2, 2);
  c.expert_model_parallel_size = 2;
  c.sequence_parallel = true;
  c.seq_length = 256;
  c.global_batch_size = 8;
  return twinstep::models::lower(mt::moe_model("qwen3-30b-a3b", 2), c).schedule;
}

std::string stream_name(const sch::Schedule& s, sch::OpId op) { return s.streams[s.ops[op].stream].name; }

}  // namespace

TEST_CASE("backend::plan_channels: a communicator per stream for collectives, per direction for send/recv",
          "[backend]") {
  ScheduleBuilder sb(ring_exchange(1u << 20, 2));
  auto& s = sb.schedule();
  for (sch::RankId r = 0; r < 2; ++r) {
    sb.add(r, "ar.tp", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 4096, sch::DType::kBF16, {}, 0});
    sb.add(r, "ar.compute", 0, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 4096, sch::DType::kBF16, {}, 0});
    sb.add(r, "ar.tp2", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 4096, sch::DType::kBF16, {}, 0});
  }
  const auto plan = be::plan_channels(s);
  REQUIRE(plan.channel_of_op.size() == s.ops.size());
  // Channels in order of first use: 0>1 (op 1, rank 0's send), 1>0 (op 2, rank 0's recv), then the collectives.
  REQUIRE(plan.channels.size() == 4);
  CHECK(plan.channels[0].point_to_point);
  CHECK(plan.channels[0].src == 0);
  CHECK(plan.channels[0].dst == 1);
  CHECK(plan.channels[1].src == 1);
  CHECK(plan.channels[1].dst == 0);
  CHECK(plan.channels[0].members == std::vector<sch::RankId>{0, 1});
  CHECK(plan.channels[0].key.find("tx>rx") != std::string::npos);
  CHECK_FALSE(plan.channels[2].point_to_point);
  for (const auto& op : s.ops) {
    INFO(op.name << " on rank " << op.rank);
    const auto ch = plan.channel_of_op[op.id];
    if (std::holds_alternative<sch::Compute>(op.body) && op.name.rfind("gemm", 0) == 0) {
      CHECK(ch == be::kNoChannel);
      continue;
    }
    // A send and its matching recv share a channel; the two directions never do.
    if (std::holds_alternative<sch::Send>(op.body)) CHECK(ch == (op.rank == 0 ? 0u : 1u));
    if (std::holds_alternative<sch::Recv>(op.body)) CHECK(ch == (op.rank == 1 ? 0u : 1u));
    if (op.name == "ar.tp" || op.name == "ar.tp2") CHECK(ch == 2u);
    if (op.name == "ar.compute") CHECK(ch == 3u);
  }
  CHECK(be::plan_channels(s).channels.size() == plan.channels.size());  // deterministic

  // Tags that reorder a direction (rank 0 sends tag 0 then tag 5; rank 1 receives tag 5 first) get a channel each,
  // because NCCL matches by order alone.
  auto tagged = ring_exchange(1u << 20, 2, 5);
  std::swap(tagged.ops[5].body, tagged.ops[11].body);  // rank 1's recv0 <-> recv1: it now receives tag 5 first
  std::swap(tagged.ops[5].name, tagged.ops[11].name);
  const auto tplan = be::plan_channels(tagged);
  CHECK(tplan.channels.size() > 2);
  CHECK(tplan.channel_of_op[1] != tplan.channel_of_op[7]);   // rank 0's send tag 0 and send tag 5
  CHECK(tplan.channel_of_op[1] == tplan.channel_of_op[11]);  // rank 0's send tag 0 and rank 1's recv tag 0
  CHECK(tplan.channel_of_op[7] == tplan.channel_of_op[5]);   // and the two of tag 5
}

TEST_CASE("backend::plan_channels: a lowered TP2/PP2/EP2 step gets the channels schedule::match implies", "[backend]") {
  const sch::Schedule s = lowered_tp2_pp2_ep2();
  const sch::Matching m = sch::match(s);
  const be::ChannelPlan plan = be::plan_channels(s, m);
  REQUIRE(plan.channel_of_op.size() == s.ops.size());
  std::set<std::string> kinds;
  std::vector<std::uint32_t> first_use;
  std::size_t collectives = 0, p2p = 0;
  for (const auto& op : s.ops) {
    const auto ch = plan.channel_of_op[op.id];
    const bool comm = !std::holds_alternative<sch::Compute>(op.body) && !std::holds_alternative<sch::Host>(op.body) &&
                      !std::holds_alternative<sch::HostSync>(op.body);
    INFO(op.name << " on rank " << op.rank);
    REQUIRE((ch != be::kNoChannel) == comm);
    if (!comm) continue;
    if (std::find(first_use.begin(), first_use.end(), ch) == first_use.end()) first_use.push_back(ch);
    const be::CommChannel& channel = plan.channels[ch];
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      ++collectives;
      kinds.insert(s.communicators[col->comm].kind);
      // The IR communicator's members in its order; every op of the instance on this channel.
      CHECK(channel.members == s.communicators[col->comm].members);
      CHECK_FALSE(channel.point_to_point);
      const auto inst = m.instance_of[op.id];
      REQUIRE(inst < m.collectives.size());
      std::string streams;
      for (auto other : m.collectives[inst].ops) {
        REQUIRE(other != sch::kNoOp);
        CHECK(plan.channel_of_op[other] == ch);
        streams += (streams.empty() ? "" : ",") + stream_name(s, other);
      }
      CHECK(channel.key.find("streams " + streams + " [") != std::string::npos);
      if (col->kind == sch::CollectiveKind::kAllToAll) CHECK(channel.all_to_all);
    } else {
      ++p2p;
      // A send and its matching recv share the channel: sender -> receiver, both in the pair.
      const sch::OpId partner = m.partner[op.id];
      REQUIRE(partner != sch::kNoOp);
      CHECK(plan.channel_of_op[partner] == ch);
      CHECK(channel.point_to_point);
      const bool send = std::holds_alternative<sch::Send>(op.body);
      CHECK(channel.src == (send ? op.rank : s.ops[partner].rank));
      CHECK(channel.dst == (send ? s.ops[partner].rank : op.rank));
      CHECK(channel.members ==
            std::vector<sch::RankId>{std::min(channel.src, channel.dst), std::max(channel.src, channel.dst)});
    }
  }
  CHECK(collectives > 0);
  CHECK(p2p > 0);
  CHECK(kinds.count("tp") == 1);
  CHECK(kinds.count("ep") == 1);
  // Channels are listed in order of first use by op id (the same list on every rank).
  std::vector<std::uint32_t> listed(plan.channels.size());
  for (std::uint32_t i = 0; i < listed.size(); ++i) listed[i] = i;
  CHECK(first_use == listed);
  // On a channel each rank's ops lie on one stream, and its sends and recvs pair in program order as the matching
  // pairs them (NCCL matches by order alone).
  std::vector<std::vector<sch::OpId>> sends(plan.channels.size()), recvs(plan.channels.size());
  std::map<std::pair<std::uint32_t, sch::RankId>, std::set<sch::StreamId>> streams_of;
  for (const auto& op : s.ops) {
    const auto ch = plan.channel_of_op[op.id];
    if (ch == be::kNoChannel) continue;
    streams_of[{ch, op.rank}].insert(op.stream);
    if (std::holds_alternative<sch::Send>(op.body)) sends[ch].push_back(op.id);
    if (std::holds_alternative<sch::Recv>(op.body)) recvs[ch].push_back(op.id);
  }
  for (const auto& [where, streams] : streams_of) CHECK(streams.size() == 1);
  for (std::size_t c = 0; c < plan.channels.size(); ++c) {
    REQUIRE(sends[c].size() == recvs[c].size());
    for (std::size_t k = 0; k < sends[c].size(); ++k) CHECK(m.partner[sends[c][k]] == recvs[c][k]);
  }
  // The overload that matches first gives the same plan.
  const be::ChannelPlan again = be::plan_channels(s);
  CHECK(again.channel_of_op == plan.channel_of_op);
  REQUIRE(again.channels.size() == plan.channels.size());
  for (std::size_t c = 0; c < plan.channels.size(); ++c) CHECK(again.channels[c].key == plan.channels[c].key);
}

TEST_CASE("backend::split_rounds: member-disjoint channels share a split, in first-fit order", "[backend]") {
  be::ChannelPlan plan;
  auto channel = [](std::vector<sch::RankId> members) {
    return be::CommChannel{"c", std::move(members), false, false, 0, 0};
  };
  plan.channels = {channel({0, 1}), channel({2, 3}), channel({1, 2}), channel({0, 1, 2, 3}), channel({3, 0})};
  const std::vector<std::uint32_t> all{0, 1, 2, 3, 4};
  const auto rounds = be::split_rounds(plan, all, 4);
  REQUIRE(rounds.size() == 3);
  CHECK(rounds[0].channels == std::vector<std::uint32_t>{0, 1});
  CHECK(rounds[1].channels == std::vector<std::uint32_t>{2, 4});  // {3,0} clashes with round 0, fits beside {1,2}
  CHECK(rounds[2].channels == std::vector<std::uint32_t>{3});
  // Color = index in the round, key = position in the member list (so NCCL rank = position).
  const auto args = be::split_args(plan, rounds[1], 0);
  REQUIRE(args.has_value());
  CHECK(args->color == 1);
  CHECK(args->key == 1);
  CHECK(args->channel == 4u);
  CHECK_FALSE(be::split_args(plan, rounds[0], 7).has_value());  // a rank in none of the round's channels
  // Only the channels still to create are split.
  const std::vector<std::uint32_t> some{3};
  const auto later = be::split_rounds(plan, some, 4);
  REQUIRE(later.size() == 1);
  CHECK(later[0].channels == std::vector<std::uint32_t>{3});
}

TEST_CASE("backend::split_rounds: on a lowered step every channel is split once and no round reuses a rank",
          "[backend]") {
  const sch::Schedule s = lowered_tp2_pp2_ep2();
  const be::ChannelPlan plan = be::plan_channels(s);
  std::vector<std::uint32_t> all(plan.channels.size());
  for (std::uint32_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto rounds = be::split_rounds(plan, all, s.world_size);
  std::vector<int> seen(plan.channels.size(), 0);
  for (const auto& round : rounds) {
    std::vector<int> ranks(s.world_size, 0);
    for (auto c : round.channels) {
      ++seen[c];
      for (auto r : plan.channels[c].members) ++ranks[r];
    }
    CHECK(std::all_of(ranks.begin(), ranks.end(), [](int n) { return n <= 1; }));
    // Each rank's color and key name its own channel in the round.
    for (sch::RankId r = 0; r < s.world_size; ++r) {
      const auto args = be::split_args(plan, round, r);
      if (!args) continue;
      CHECK(round.channels[static_cast<std::size_t>(args->color)] == args->channel);
      CHECK(plan.channels[args->channel].members[static_cast<std::size_t>(args->key)] == r);
    }
  }
  CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
}
