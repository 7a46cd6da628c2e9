// Cross-rank matching: the n-th collective of every member of a communicator forms one instance, and the k-th
// send a->b with (comm, tag) pairs with the k-th recv on b from a with the same (comm, tag). In a reduced schedule
// whose ranks mirror absent ones, the k-th send of rank a to an absent peer pairs with the k-th recv of rank a from
// an absent peer, per (comm, tag): by symmetry, what a receives is sent when a sends. O(n log n).
#include "schedule/matching.hpp"

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <utility>

#include "common/hash.hpp"

namespace twinstep::schedule {

namespace {

/// A transfer's matching key: communicator, sender, receiver, tag.
struct P2PKey {
  CommId comm;
  RankId from, to;
  std::uint32_t tag;
  bool operator==(const P2PKey&) const = default;
};

struct P2PKeyHash {
  std::size_t operator()(const P2PKey& k) const {
    std::uint64_t h = kFnvOffsetBasis;
    for (std::uint64_t v : {std::uint64_t{k.comm}, std::uint64_t{k.from}, std::uint64_t{k.to}, std::uint64_t{k.tag}}) {
      fnv_mix(h, v);
    }
    return h;
  }
};

}  // namespace

Matching::Matching(const Matching& other)
    : collectives(other.collectives),
      instance_of(other.instance_of),
      partner(other.partner),
      instance_ops(other.instance_ops) {
  for (auto& inst : collectives) {
    inst.ops = {instance_ops.data() + (inst.ops.data() - other.instance_ops.data()), inst.ops.size()};
  }
}

Matching& Matching::operator=(const Matching& other) {
  if (this != &other) *this = Matching(other);
  return *this;
}

OpId first_present_op(const CollectiveInstance& inst) {
  for (OpId o : inst.ops) {
    if (o != kNoOp) return o;
  }
  return kNoOp;
}

Matching match(const Schedule& schedule) {
  const std::size_t n = schedule.ops.size();
  Matching m;
  m.instance_of.assign(n, UINT32_MAX);
  m.partner.assign(n, kNoOp);

  // Per communicator with collectives: rank -> position, and per position the collectives seen so far. Built on first
  // use: a reduced schedule touches few of the world's communicators.
  const std::size_t ncomm = schedule.communicators.size();
  std::vector<std::unordered_map<RankId, std::uint32_t>> position(ncomm);  // lookups only
  std::vector<std::vector<std::uint32_t>> seen(ncomm);
  std::vector<std::uint32_t> instances(ncomm, 0);  // per communicator: the most collectives of one member
  // Per communicator, the last rank looked up and its position (UINT32_MAX: not a member): the ops come rank by rank,
  // so a rank's collectives on a communicator look its position up once instead of once per op.
  struct LastLookup {
    RankId rank = UINT32_MAX;
    std::uint32_t pos = UINT32_MAX;
  };
  std::vector<LastLookup> last(ncomm);
  struct Member {
    OpId op;
    CommId comm;
    std::uint32_t pos, seq;
  };
  std::vector<Member> members_seen;
  // Sends and recvs per key, in program order; keys are looked up only, each key's lists pair on their own.
  std::unordered_map<P2PKey, std::pair<std::vector<OpId>, std::vector<OpId>>, P2PKeyHash> p2p;
  std::vector<bool> present;
  for (RankId r : schedule.ranks) {
    if (r >= present.size()) present.resize(std::size_t{r} + 1, false);
    present[r] = true;
  }
  auto absent = [&](RankId r) { return r >= present.size() || !present[r]; };

  for (std::size_t i = 0; i < n; ++i) {
    const Op& op = schedule.ops[i];
    const auto id = static_cast<OpId>(i);
    if (const auto* col = std::get_if<Collective>(&op.body)) {
      if (col->comm >= ncomm) continue;
      if (seen[col->comm].empty()) {
        const auto& members = schedule.communicators[col->comm].members;
        seen[col->comm].assign(std::max<std::size_t>(1, members.size()), 0);
        for (std::size_t k = 0; k < members.size(); ++k) {
          position[col->comm].emplace(members[k], static_cast<std::uint32_t>(k));
        }
      }
      LastLookup& cached = last[col->comm];
      if (cached.rank != op.rank) {
        const auto it = position[col->comm].find(op.rank);
        cached = {op.rank, it == position[col->comm].end() ? UINT32_MAX : it->second};
      }
      if (cached.pos == UINT32_MAX) continue;
      const std::uint32_t seq = seen[col->comm][cached.pos]++;
      instances[col->comm] = std::max(instances[col->comm], seq + 1);
      members_seen.push_back({id, col->comm, cached.pos, seq});
    } else if (const auto* s = std::get_if<Send>(&op.body)) {
      // Mirrored pairs use the key (comm, rank, rank, tag), which no ordinary pair has (no self sends).
      const RankId to = absent(s->peer) ? op.rank : s->peer;
      p2p[{s->comm, op.rank, to, s->tag}].first.push_back(id);
    } else if (const auto* r = std::get_if<Recv>(&op.body)) {
      const RankId from = absent(r->peer) ? op.rank : r->peer;
      p2p[{r->comm, from, op.rank, r->tag}].second.push_back(id);
    }
  }

  // Instances numbered by communicator, then by sequence; their ops laid out in that order.
  std::vector<std::uint32_t> first_instance(ncomm, 0);
  std::size_t total = 0, slots = 0;
  for (std::size_t c = 0; c < ncomm; ++c) {
    first_instance[c] = static_cast<std::uint32_t>(total);
    total += instances[c];
    slots += std::size_t{instances[c]} * schedule.communicators[c].members.size();
  }
  m.instance_ops.assign(slots, kNoOp);
  m.collectives.resize(total);
  std::size_t offset = 0;
  for (std::size_t c = 0; c < ncomm; ++c) {
    const std::size_t size = schedule.communicators[c].members.size();
    for (std::uint32_t k = 0; k < instances[c]; ++k) {
      CollectiveInstance& inst = m.collectives[first_instance[c] + k];
      inst.comm = static_cast<CommId>(c);
      inst.seq = k;
      inst.ops = {m.instance_ops.data() + offset, size};
      offset += size;
    }
  }
  for (const Member& x : members_seen) {
    const std::uint32_t index = first_instance[x.comm] + x.seq;
    m.instance_ops[static_cast<std::size_t>(m.collectives[index].ops.data() - m.instance_ops.data()) + x.pos] = x.op;
    m.instance_of[x.op] = index;
  }

  for (const auto& [key, lists] : p2p) {
    const auto& [sends, recvs] = lists;
    for (std::size_t k = 0; k < sends.size() && k < recvs.size(); ++k) {
      m.partner[sends[k]] = recvs[k];
      m.partner[recvs[k]] = sends[k];
    }
  }
  return m;
}

}  // namespace twinstep::schedule
