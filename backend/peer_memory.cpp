// Peer-mapped buffer planning and memory-handle encoding (peer_memory.hpp); host code only.
#include "backend/peer_memory.hpp"

#include <tuple>

#include "backend/mpi_group.hpp"
#include "common/error.hpp"
#include "schedule/json.hpp"

namespace twinstep::backend {

namespace sch = twinstep::schedule;

std::vector<PeerBuffer> plan_peer_buffers(const sch::Schedule& schedule, sch::RankId rank) {
  std::map<std::tuple<sch::CommId, sch::RankId, sch::Transport>, std::uint64_t> largest;
  for (const auto& op : schedule.ops) {
    if (op.rank != rank) continue;
    const auto* r = std::get_if<sch::Recv>(&op.body);
    if (r == nullptr || r->transport == sch::Transport::kNccl) continue;
    auto& b = largest[{r->comm, r->peer, r->transport}];
    b = std::max(b, r->bytes);
  }
  std::vector<PeerBuffer> out;
  out.reserve(largest.size());
  for (const auto& [key, bytes] : largest) {
    out.push_back(PeerBuffer{std::get<0>(key), std::get<1>(key), std::get<2>(key), bytes});
  }
  return out;
}

std::uint64_t peer_buffer_bytes(const std::vector<PeerBuffer>& buffers) {
  std::uint64_t sum = 0;
  for (const auto& b : buffers) sum += b.bytes;
  return sum;
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

std::map<std::string, std::string> transports_ran(const sch::Schedule& schedule) {
  std::map<std::string, std::string> out;
  for (const auto& op : schedule.ops) {
    sch::Transport t = sch::Transport::kNccl;
    if (const auto* s = std::get_if<sch::Send>(&op.body)) t = s->transport;
    if (const auto* r = std::get_if<sch::Recv>(&op.body)) t = r->transport;
    if (t != sch::Transport::kNccl) out.emplace(sch::transport_name(t), "nccl");
  }
  return out;
}

}  // namespace twinstep::backend
