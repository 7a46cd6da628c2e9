// Cross-rank matching: the n-th collective of every member of a communicator forms one instance, and the k-th
// send a->b with (comm, tag) pairs with the k-th recv on b from a with the same (comm, tag). In a reduced schedule
// whose ranks mirror absent ones, the k-th send of rank a to an absent peer pairs with the k-th recv of rank a from
// an absent peer, per (comm, tag): by symmetry, what a receives is sent when a sends. O(n log n).
#include "schedule/matching.hpp"

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <utility>

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
    std::size_t h = 1469598103934665603ull;
    for (std::uint64_t v : {std::uint64_t{k.comm}, std::uint64_t{k.from}, std::uint64_t{k.to}, std::uint64_t{k.tag}}) {
      h ^= v;
      h *= 1099511628211ull;
    }
    return h;
  }
};

}  // namespace

Matching match(const Schedule& schedule) {
  const std::size_t n = schedule.ops.size();
  Matching m;
  m.instance_of.assign(n, UINT32_MAX);
  m.partner.assign(n, kNoOp);

  // Per communicator with collectives: rank -> position, and per position the collective ops in program order.
  // Built on first use: a reduced schedule touches few of the world's communicators.
  const std::size_t ncomm = schedule.communicators.size();
  std::vector<std::unordered_map<RankId, std::uint32_t>> position(ncomm);  // lookups only
  std::vector<std::vector<std::vector<OpId>>> seqs(ncomm);
  std::vector<std::uint8_t> used(ncomm, 0);
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
      if (used[col->comm] == 0) {
        used[col->comm] = 1;
        const auto& members = schedule.communicators[col->comm].members;
        seqs[col->comm].resize(members.size());
        for (std::size_t k = 0; k < members.size(); ++k) {
          position[col->comm].emplace(members[k], static_cast<std::uint32_t>(k));
        }
      }
      auto it = position[col->comm].find(op.rank);
      if (it == position[col->comm].end()) continue;
      seqs[col->comm][it->second].push_back(id);
    } else if (const auto* s = std::get_if<Send>(&op.body)) {
      // Mirrored pairs use the key (comm, rank, rank, tag), which no ordinary pair has (no self sends).
      const RankId to = absent(s->peer) ? op.rank : s->peer;
      p2p[{s->comm, op.rank, to, s->tag}].first.push_back(id);
    } else if (const auto* r = std::get_if<Recv>(&op.body)) {
      const RankId from = absent(r->peer) ? op.rank : r->peer;
      p2p[{r->comm, from, op.rank, r->tag}].second.push_back(id);
    }
  }

  for (std::size_t c = 0; c < ncomm; ++c) {
    std::size_t count = 0;
    for (const auto& s : seqs[c]) count = std::max(count, s.size());
    for (std::size_t k = 0; k < count; ++k) {
      CollectiveInstance inst;
      inst.comm = static_cast<CommId>(c);
      inst.seq = static_cast<std::uint32_t>(k);
      inst.ops.assign(seqs[c].size(), kNoOp);
      const auto index = static_cast<std::uint32_t>(m.collectives.size());
      for (std::size_t pos = 0; pos < seqs[c].size(); ++pos) {
        if (k < seqs[c][pos].size()) {
          inst.ops[pos] = seqs[c][pos][k];
          m.instance_of[seqs[c][pos][k]] = index;
        }
      }
      m.collectives.push_back(std::move(inst));
    }
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
