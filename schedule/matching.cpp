// Cross-rank matching: the n-th collective of every member of a communicator forms one instance, and the k-th
// send a->b with (comm, tag) pairs with the k-th recv on b from a with the same (comm, tag). In a reduced schedule
// whose ranks mirror absent ones, the k-th send of rank a to an absent peer pairs with the k-th recv of rank a from
// an absent peer, per (comm, tag): by symmetry, what a receives is sent when a sends. O(n log n).
#include "schedule/matching.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace twinstep::schedule {

Matching match(const Schedule& schedule) {
  const std::size_t n = schedule.ops.size();
  Matching m;
  m.instance_of.assign(n, UINT32_MAX);
  m.partner.assign(n, kNoOp);

  // Per communicator: rank -> position, and per position the collective ops in program order.
  const std::size_t ncomm = schedule.communicators.size();
  std::vector<std::unordered_map<RankId, std::uint32_t>> position(ncomm);  // lookups only
  std::vector<std::vector<std::vector<OpId>>> seqs(ncomm);
  for (std::size_t c = 0; c < ncomm; ++c) {
    const auto& members = schedule.communicators[c].members;
    seqs[c].resize(members.size());
    for (std::size_t i = 0; i < members.size(); ++i) position[c].emplace(members[i], static_cast<std::uint32_t>(i));
  }
  using P2PKey = std::tuple<CommId, RankId, RankId, std::uint32_t>;  // comm, sender, receiver, tag
  std::map<P2PKey, std::pair<std::vector<OpId>, std::vector<OpId>>> p2p;
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
