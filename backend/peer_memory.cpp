// Peer-mapped transfers, host side (peer_memory.hpp): reach and fallbacks, the layout of each rank's peer-mapped
// allocation, memory-handle encoding, and the trace context's transport fields.
#include "backend/peer_memory.hpp"

#include <algorithm>
#include <tuple>
#include <utility>

#include "backend/mpi_group.hpp"
#include "common/error.hpp"
#include "schedule/json.hpp"

namespace twinstep::backend {

namespace sch = twinstep::schedule;

namespace {

/// A link's identity: (communicator, sender, receiver, tag, transport).
using LinkKey = std::tuple<sch::CommId, sch::RankId, sch::RankId, std::uint32_t, sch::Transport>;

/// The link key of a non-NCCL send/recv, or false for any other op.
bool link_key(const sch::Op& op, LinkKey& key) {
  if (const auto* snd = std::get_if<sch::Send>(&op.body); snd != nullptr && snd->transport != sch::Transport::kNccl) {
    key = {snd->comm, op.rank, snd->peer, snd->tag, snd->transport};
    return true;
  }
  if (const auto* rcv = std::get_if<sch::Recv>(&op.body); rcv != nullptr && rcv->transport != sch::Transport::kNccl) {
    key = {rcv->comm, rcv->peer, op.rank, rcv->tag, rcv->transport};
    return true;
  }
  return false;
}

std::uint64_t round_up(std::uint64_t v, std::uint64_t align) { return (v + align - 1) / align * align; }

Reach reach_of(const std::vector<std::vector<Reach>>& reach, sch::RankId a, sch::RankId b) {
  if (a >= reach.size() || b >= reach[a].size()) return Reach::kOtherHost;
  return reach[a][b];
}

}  // namespace

PeerLayout plan_peer_layout(const sch::Schedule& s) {
  struct Acc {
    std::uint64_t bytes = 0;
    std::uint32_t sends = 0;
  };
  std::map<LinkKey, Acc> acc;
  std::size_t ranks = s.world_size;
  for (const auto& op : s.ops) {
    LinkKey key;
    if (!link_key(op, key)) continue;
    Acc& a = acc[key];
    const bool is_send = std::holds_alternative<sch::Send>(op.body);
    a.bytes = std::max(a.bytes, is_send ? std::get<sch::Send>(op.body).bytes : std::get<sch::Recv>(op.body).bytes);
    if (is_send) ++a.sends;
    ranks = std::max<std::size_t>(ranks, std::max(std::get<1>(key), std::get<2>(key)) + 1);
  }
  PeerLayout out;
  out.rank_bytes.assign(ranks, 0);
  out.link_of_op.assign(s.ops.size(), kNoLink);
  std::map<LinkKey, std::uint32_t> index;
  std::vector<std::uint64_t> flags_end(ranks, 0);
  for (const auto& [key, a] : acc) {
    PeerLink l;
    std::tie(l.comm, l.src, l.dst, l.tag, l.transport) = key;
    l.slot_bytes = round_up(std::max<std::uint64_t>(a.bytes, 1), kPeerSlotAlign);
    l.slots = std::clamp<std::uint32_t>(a.sends, 1, kPeerSlots);
    l.ready_offset = flags_end[l.dst];
    flags_end[l.dst] += sizeof(std::uint32_t) * l.slots;
    l.credit_offset = flags_end[l.src];
    flags_end[l.src] += sizeof(std::uint32_t) * l.slots;
    index.emplace(key, static_cast<std::uint32_t>(out.links.size()));
    out.links.push_back(l);
  }
  std::vector<std::uint64_t> data_end(ranks, 0);
  for (std::size_t r = 0; r < ranks; ++r) data_end[r] = round_up(flags_end[r], kPeerSlotAlign);
  for (auto& l : out.links) {
    l.data_offset = data_end[l.dst];
    data_end[l.dst] += l.slots * l.slot_bytes;
  }
  for (std::size_t r = 0; r < ranks; ++r) out.rank_bytes[r] = flags_end[r] > 0 ? data_end[r] : 0;
  for (const auto& op : s.ops) {
    LinkKey key;
    if (link_key(op, key)) out.link_of_op[op.id] = index.at(key);
  }
  return out;
}

PeerSendStep send_step(const PeerLink& l, std::uint64_t k) {
  PeerSendStep s;
  s.slot = k % l.slots;
  s.wait_credit = k >= l.slots;  // the slot held message k - slots: it must have been received
  s.credit_at_least = s.wait_credit ? static_cast<std::uint32_t>(k - l.slots + 1) : 0;
  s.ready_value = static_cast<std::uint32_t>(k + 1);
  return s;
}

PeerRecvStep recv_step(const PeerLink& l, std::uint64_t k) {
  PeerRecvStep r;
  r.slot = k % l.slots;
  r.ready_at_least = static_cast<std::uint32_t>(k + 1);
  r.credit_value = static_cast<std::uint32_t>(k + 1);
  return r;
}

std::vector<std::vector<Reach>> reach_matrix(const std::vector<RankView>& views) {
  const std::size_t n = views.size();
  auto can = [&](std::size_t a, std::size_t b) { return b < views[a].can_map.size() && views[a].can_map[b]; };
  std::vector<std::vector<Reach>> out(n, std::vector<Reach>(n, Reach::kMappable));
  for (std::size_t a = 0; a < n; ++a) {
    for (std::size_t b = 0; b < n; ++b) {
      if (a == b) continue;
      if (views[a].host != views[b].host) {
        out[a][b] = Reach::kOtherHost;
      } else if (!can(a, b) || !can(b, a)) {
        out[a][b] = Reach::kNoPeerAccess;
      }
    }
  }
  return out;
}

sch::Schedule with_fallbacks(const sch::Schedule& s, const std::vector<std::vector<Reach>>& reach,
                             std::vector<Fallback>* fallbacks) {
  sch::Schedule out = s;
  std::map<std::pair<sch::RankId, sch::RankId>, Reach> fell;
  auto visit = [&](sch::RankId me, auto& p2p) {
    if (p2p.transport == sch::Transport::kNccl) return;
    const Reach r = reach_of(reach, me, p2p.peer);
    if (r == Reach::kMappable) return;
    p2p.transport = sch::Transport::kNccl;
    p2p.sm_count = 0;
    fell.emplace(std::minmax(me, p2p.peer), r);
  };
  for (auto& op : out.ops) {
    if (auto* snd = std::get_if<sch::Send>(&op.body)) visit(op.rank, *snd);
    if (auto* rcv = std::get_if<sch::Recv>(&op.body)) visit(op.rank, *rcv);
  }
  if (fallbacks != nullptr) {
    fallbacks->clear();
    for (const auto& [pair, why] : fell) fallbacks->push_back(Fallback{pair.first, pair.second, why});
  }
  return out;
}

bool uses_nccl(const sch::Schedule& s) {
  return std::any_of(s.ops.begin(), s.ops.end(), [](const sch::Op& op) {
    if (std::holds_alternative<sch::Collective>(op.body)) return true;
    if (const auto* snd = std::get_if<sch::Send>(&op.body)) return snd->transport == sch::Transport::kNccl;
    if (const auto* rcv = std::get_if<sch::Recv>(&op.body)) return rcv->transport == sch::Transport::kNccl;
    return false;
  });
}

std::string encode_handle(const MemHandle& handle) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((handle.size >> (8 * i)) & 0xff);
  return out + handle.bytes;
}

MemHandle decode_handle(std::string_view text) {
  if (text.size() < 8) {
    throw Error("peer memory handle of " + std::to_string(text.size()) +
                " bytes received at start-up: shorter than its 8-byte size header (a rank runs another twinstep "
                "build: run the same binary on every rank)");
  }
  MemHandle h;
  for (int i = 0; i < 8; ++i) {
    h.size |= static_cast<std::uint64_t>(static_cast<unsigned char>(text[static_cast<std::size_t>(i)])) << (8 * i);
  }
  h.bytes = std::string(text.substr(8));
  return h;
}

std::vector<MemHandle> MpiHandleExchange::all_gather(const MemHandle& mine) {
  std::vector<MemHandle> out;
  for (const auto& text : mpi_.all_gather(encode_handle(mine))) out.push_back(decode_handle(text));
  return out;
}

std::map<std::string, std::string> transports_ran(const sch::Schedule& asked, const sch::Schedule& ran) {
  auto transport_of = [](const sch::Op& op) {
    if (const auto* s = std::get_if<sch::Send>(&op.body)) return s->transport;
    if (const auto* r = std::get_if<sch::Recv>(&op.body)) return r->transport;
    return sch::Transport::kNccl;
  };
  struct Seen {
    bool mapped = false, nccl = false;
  };
  std::map<std::string, Seen> seen;
  for (std::size_t i = 0; i < asked.ops.size(); ++i) {
    const sch::Transport want = transport_of(asked.ops[i]);
    if (want == sch::Transport::kNccl) continue;
    const bool as_asked = i < ran.ops.size() && transport_of(ran.ops[i]) == want;
    (as_asked ? seen[sch::transport_name(want)].mapped : seen[sch::transport_name(want)].nccl) = true;
  }
  std::map<std::string, std::string> out;
  for (const auto& [name, s] : seen) out.emplace(name, s.mapped && s.nccl ? name + "+nccl" : s.mapped ? name : "nccl");
  return out;
}

std::string transport_ran_text(const std::map<std::string, std::string>& ran) {
  std::string out;
  for (const auto& [asked, how] : ran) out += (out.empty() ? "" : ",") + (how == asked ? asked : asked + ":" + how);
  return out;
}

std::string fallback_text(const std::vector<Fallback>& fallbacks) {
  std::string out;
  for (const auto& f : fallbacks) {
    out += out.empty() ? "" : "; ";
    out += "ranks " + std::to_string(f.a) + " and " + std::to_string(f.b) + ": ";
    out += f.why == Reach::kOtherHost ? "on different hosts"
                                      : "their GPUs cannot map each other's memory (cudaDeviceCanAccessPeer false, or "
                                        "the peer's GPU not visible to the process)";
  }
  return out.empty() ? out : "copy_engine/sm_kernel send/recv ran as NCCL send/recv between " + out;
}

}  // namespace twinstep::backend
