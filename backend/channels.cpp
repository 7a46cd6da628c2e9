// The channel plan (channels.hpp) on top of schedule::match, and the grouping of channel creation into
// ncclCommSplit rounds.
#include "backend/channels.hpp"

#include <algorithm>
#include <map>
#include <utility>

namespace twinstep::backend {

namespace sch = twinstep::schedule;

namespace {

std::string stream_word(const sch::Schedule& s, sch::OpId id) {
  if (id == sch::kNoOp || id >= s.ops.size() || s.ops[id].stream >= s.streams.size()) return "?";
  return s.streams[s.ops[id].stream].name;
}

std::string members_word(const std::vector<sch::RankId>& members) {
  std::string out = "[";
  for (std::size_t i = 0; i < members.size(); ++i) out += (i == 0 ? "" : ",") + std::to_string(members[i]);
  return out + "]";
}

/// Builds the plan, keying the send/recv ops marked in `p2p_tagged` by their tag too.
ChannelPlan build_channels(const sch::Schedule& s, const sch::Matching& m, const std::vector<bool>& p2p_tagged) {
  ChannelPlan out;
  out.channel_of_op.assign(s.ops.size(), kNoChannel);
  std::map<std::string, std::uint32_t> index;
  auto use = [&](const sch::Op& op, std::string key, std::vector<sch::RankId> members, bool p2p, bool a2a,
                 sch::RankId src = 0, sch::RankId dst = 0) {
    key += " " + members_word(members);
    auto [it, fresh] = index.emplace(key, static_cast<std::uint32_t>(out.channels.size()));
    if (fresh) out.channels.push_back(CommChannel{key, std::move(members), p2p, false, src, dst});
    out.channels[it->second].all_to_all = out.channels[it->second].all_to_all || a2a;
    out.channel_of_op[op.id] = it->second;
  };
  for (const auto& op : s.ops) {
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      if (col->comm >= s.communicators.size()) continue;
      // Keyed by the streams of every member's op of the instance: each rank's ops of one channel lie on one of
      // its streams, so NCCL's issue order on the channel is that stream's FIFO order, which the IR has anyway.
      std::string streams;
      const auto inst = m.instance_of[op.id];
      if (inst < m.collectives.size()) {
        for (auto other : m.collectives[inst].ops) streams += (streams.empty() ? "" : ",") + stream_word(s, other);
      } else {
        streams = stream_word(s, op.id);
      }
      const auto& comm = s.communicators[col->comm];
      use(op, "coll \"" + comm.name + "\" streams " + streams, comm.members, false,
          col->kind == sch::CollectiveKind::kAllToAll);
      continue;
    }
    const auto* snd = std::get_if<sch::Send>(&op.body);
    const auto* rcv = std::get_if<sch::Recv>(&op.body);
    if (snd == nullptr && rcv == nullptr) continue;
    // copy_engine / sm_kernel pairs run over peer-mapped memory (peer_memory.hpp), not on NCCL; those that cannot
    // were turned into NCCL ones before planning (with_fallbacks).
    if ((snd != nullptr ? snd->transport : rcv->transport) != sch::Transport::kNccl) continue;
    const sch::CommId c = snd != nullptr ? snd->comm : rcv->comm;
    if (c >= s.communicators.size()) continue;
    // Keyed by (communicator, sender, receiver, sender's stream, receiver's stream): a send and its recv share the
    // channel whatever streams they run on; the two directions of an exchange never serialize against each other.
    const sch::OpId partner = m.partner[op.id];
    const sch::RankId src = snd != nullptr ? op.rank : rcv->peer;
    const sch::RankId dst = snd != nullptr ? snd->peer : op.rank;
    const std::string send_stream = snd != nullptr ? stream_word(s, op.id) : stream_word(s, partner);
    const std::string recv_stream = snd != nullptr ? stream_word(s, partner) : stream_word(s, op.id);
    std::string key = "p2p \"" + s.communicators[c].name + "\" " + std::to_string(src) + ">" + std::to_string(dst) +
                      " streams " + send_stream + ">" + recv_stream;
    const std::uint32_t tag = snd != nullptr ? snd->tag : rcv->tag;
    std::vector<sch::RankId> members{std::min(src, dst), std::max(src, dst)};
    if (src == dst) members.pop_back();
    if (p2p_tagged[op.id]) key += " tag " + std::to_string(tag);
    use(op, key, members, true, false, src, dst);
  }
  return out;
}

/// Channels whose sends and recvs, each in program order, are not pairwise partners (NCCL matches by order).
std::vector<bool> misordered_channels(const sch::Schedule& s, const sch::Matching& m, const ChannelPlan& plan) {
  std::vector<std::vector<sch::OpId>> sends(plan.channels.size()), recvs(plan.channels.size());
  for (const auto& op : s.ops) {
    const auto ch = plan.channel_of_op[op.id];
    if (ch == kNoChannel || !plan.channels[ch].point_to_point) continue;
    (std::holds_alternative<sch::Send>(op.body) ? sends : recvs)[ch].push_back(op.id);
  }
  std::vector<bool> bad(plan.channels.size(), false);
  for (std::size_t c = 0; c < plan.channels.size(); ++c) {
    bad[c] = sends[c].size() != recvs[c].size();
    for (std::size_t k = 0; k < sends[c].size(); ++k) {
      bad[c] = bad[c] || k >= recvs[c].size() || m.partner[sends[c][k]] != recvs[c][k];
    }
  }
  return bad;
}

}  // namespace

ChannelPlan plan_channels(const sch::Schedule& s, const sch::Matching& m) {
  std::vector<bool> tagged(s.ops.size(), false);
  ChannelPlan plan = build_channels(s, m, tagged);
  // The IR matches a recv to a send by (communicator, sender, receiver, tag, order), NCCL by order alone: where
  // tags reorder a channel, its ops get a channel per tag (within one tag the IR's order is NCCL's).
  const auto bad = misordered_channels(s, m, plan);
  bool any = false;
  for (const auto& op : s.ops) {
    const auto ch = plan.channel_of_op[op.id];
    if (ch != kNoChannel && bad[ch]) tagged[op.id] = any = true;
  }
  if (any) plan = build_channels(s, m, tagged);
  return plan;
}

ChannelPlan plan_channels(const sch::Schedule& s) { return plan_channels(s, sch::match(s)); }

std::vector<SplitRound> split_rounds(const ChannelPlan& plan, std::span<const std::uint32_t> todo,
                                     std::uint32_t world_size) {
  std::vector<SplitRound> rounds;
  std::vector<std::vector<bool>> used;  // per round: the ranks its channels hold
  for (const auto i : todo) {
    const auto& members = plan.channels[i].members;
    std::size_t r = 0;
    for (; r < rounds.size(); ++r) {
      bool clash = false;
      for (auto m : members) clash = clash || (m < used[r].size() && used[r][m]);
      if (!clash) break;
    }
    if (r == rounds.size()) {
      rounds.emplace_back();
      used.emplace_back(world_size, false);
    }
    rounds[r].channels.push_back(i);
    for (auto m : members) {
      if (m < used[r].size()) used[r][m] = true;
    }
  }
  return rounds;
}

int channel_rank(const CommChannel& channel, sch::RankId rank) {
  const auto it = std::find(channel.members.begin(), channel.members.end(), rank);
  return it == channel.members.end() ? -1 : static_cast<int>(it - channel.members.begin());
}

std::optional<SplitArgs> split_args(const ChannelPlan& plan, const SplitRound& round, sch::RankId me) {
  std::optional<SplitArgs> out;
  for (std::size_t j = 0; j < round.channels.size(); ++j) {
    const int key = channel_rank(plan.channels[round.channels[j]], me);
    if (key >= 0) out = SplitArgs{static_cast<int>(j), key, round.channels[j]};
  }
  return out;
}

}  // namespace twinstep::backend
