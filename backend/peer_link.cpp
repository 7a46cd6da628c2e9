// Peer-mapped transfers, CUDA side (peer_link.hpp): rank views, the IPC export/import of each rank's flags and
// slots, and the protocol steps of peer_memory.hpp issued on streams (copies, and the flag kernels of kernels.hpp).
#include "backend/peer_link.hpp"

#include <algorithm>
#include <cstring>

#include "backend/error.hpp"
#include "backend/kernels.hpp"
#include "backend/mpi_group.hpp"
#include "backend/plan.hpp"
#include "common/assert.hpp"
#include "schedule/json.hpp"

namespace twinstep::backend {

namespace sch = twinstep::schedule;

namespace {

/// Which protocol step of which op a failing call belongs to, for its error message.
struct Where {
  const sch::Op& op;
  const PeerLink& link;
  bool send;
  std::uint64_t message;
  [[nodiscard]] std::string text() const {
    return "issuing " + quote_op(op) + " (" + sch::transport_name(link.transport) +
           (send ? " send to rank " + std::to_string(link.dst) : " recv from rank " + std::to_string(link.src)) +
           ", message " + std::to_string(message) + " of its link)";
  }
};

std::string api_of(const char* call) {
  const std::string s(call);
  return s.substr(0, s.find('('));
}

void check_peer(cudaError_t st, const char* call, const Where& where, const char* file, int line) {
  if (st == cudaSuccess) return;
  throw_call_error(api_of(call), static_cast<int>(st),
                   std::string(cudaGetErrorName(st)) + ": " + cudaGetErrorString(st) + ", " + where.text(), call, file,
                   line);
}

/// Runs a launcher of kernels.hpp, adding `where` to its error.
template <typename F>
void launch(const Where& where, F&& f) {
  try {
    f();
  } catch (const BackendError& e) {
    throw BackendError(e.api(), e.api_code(), e.rank(), std::string(e.what()) + ", " + where.text());
  }
}

#define TWINSTEP_PEER_CHECK(expr, where) check_peer((expr), #expr, (where), __FILE__, __LINE__)

}  // namespace

std::vector<RankView> gather_rank_views(MpiGroup& mpi, const std::string& host, int device) {
  char bus[64] = {};
  TWINSTEP_CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof bus, device));
  const std::string my_bus(bus);
  const auto buses = mpi.all_gather(my_bus);
  const auto hosts = mpi.all_gather(host);
  std::string mine(buses.size(), '0');
  for (std::size_t q = 0; q < buses.size(); ++q) {
    if (hosts[q] != host) continue;
    if (buses[q] == my_bus) {
      mine[q] = '1';  // the same GPU (ranks sharing one): IPC maps it into the other process
      continue;
    }
    int other = -1;
    if (cudaDeviceGetByPCIBusId(&other, buses[q].c_str()) != cudaSuccess) {
      (void)cudaGetLastError();  // not visible to this process: cannot check, so not mapped
      continue;
    }
    int can = 0;
    TWINSTEP_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device, other));
    mine[q] = can != 0 ? '1' : '0';
  }
  const auto all = mpi.all_gather(mine);
  std::vector<RankView> views(all.size());
  for (std::size_t r = 0; r < all.size(); ++r) {
    views[r].host = hosts[r];
    for (char c : all[r]) views[r].can_map.push_back(c == '1');
  }
  return views;
}

PeerLinks::PeerLinks(const PeerLayout& layout, sch::RankId me, HandleExchange& exchange)
    : layout_(layout), me_(me), sent_(layout.links.size(), 0), received_(layout.links.size(), 0) {
  const std::size_t ranks = layout_.rank_bytes.size();
  TWINSTEP_ASSERT(me_ < ranks, "rank outside the peer layout");
  imported_.resize(ranks);
  base_.assign(ranks, nullptr);
  MemHandle mine;
  if (const std::uint64_t bytes = layout_.rank_bytes[me_]; bytes > 0) {
    own_ = device_alloc(bytes);
    // Flags start at 0 (no message yet); the slots' bytes are whatever the senders write.
    TWINSTEP_CUDA_CHECK(cudaMemset(own_.get(), 0, bytes));
    TWINSTEP_CUDA_CHECK(cudaDeviceSynchronize());
    cudaIpcMemHandle_t h{};
    TWINSTEP_CUDA_CHECK(cudaIpcGetMemHandle(&h, own_.get()));
    mine.bytes.assign(reinterpret_cast<const char*>(&h), sizeof h);
    mine.size = bytes;
    base_[me_] = static_cast<char*>(own_.get());
  }
  const std::vector<MemHandle> all = exchange.all_gather(mine);
  // The ranks this one writes into: the receivers of its sends (slots, ready flags), the senders of its recvs
  // (credits).
  std::vector<bool> writes_into(ranks, false);
  for (const auto& l : layout_.links) {
    if (l.src == me_) writes_into[l.dst] = true;
    if (l.dst == me_) writes_into[l.src] = true;
  }
  for (std::size_t q = 0; q < ranks; ++q) {
    if (!writes_into[q] || q == me_) continue;
    const MemHandle* h = q < all.size() ? &all[q] : nullptr;
    if (h == nullptr || h->size != layout_.rank_bytes[q] || h->bytes.size() != sizeof(cudaIpcMemHandle_t)) {
      throw BackendError("cudaIpcOpenMemHandle", 0, static_cast<int>(me_),
                         "rank " + std::to_string(me_) + ": rank " + std::to_string(q) + " exported " +
                             (h == nullptr ? std::string("no") : std::to_string(h->size) + " bytes of") +
                             " peer-mapped memory, this rank's layout of the schedule expects " +
                             std::to_string(layout_.rank_bytes[q]) +
                             ": the ranks run different schedules or twinstep builds (run the same on every rank)");
    }
    cudaIpcMemHandle_t ih{};
    std::memcpy(&ih, h->bytes.data(), sizeof ih);
    void* p = nullptr;
    TWINSTEP_CUDA_CHECK(cudaIpcOpenMemHandle(&p, ih, cudaIpcMemLazyEnablePeerAccess));
    imported_[q] = IpcMapping(p);
    base_[q] = static_cast<char*>(p);
  }
}

PeerLinks::~PeerLinks() {
  if (closed_) return;
  // A peer may still write into this rank's allocation (its streams were not seen drained), and closing a mapping
  // or freeing memory waits for streams that may never finish: leak both.
  (void)own_.release();
  for (auto& m : imported_) (void)m.release();
}

std::uint32_t* PeerLinks::flag(sch::RankId owner, std::uint64_t offset, std::uint64_t slot) const {
  TWINSTEP_ASSERT(owner < base_.size() && base_[owner] != nullptr, "peer flag of a rank not mapped here");
  return reinterpret_cast<std::uint32_t*>(base_[owner] + offset + slot * sizeof(std::uint32_t));
}

void PeerLinks::send(const sch::Op& op, const void* src, std::uint64_t bytes, cudaStream_t stream) {
  const std::uint32_t li = layout_.link_of_op[op.id];
  TWINSTEP_ASSERT(li != kNoLink && layout_.links[li].src == me_, "peer send without its link");
  const PeerLink& l = layout_.links[li];
  TWINSTEP_ASSERT(bytes <= l.slot_bytes, "peer message larger than its slot");
  const std::uint64_t k = sent_[li]++;
  const PeerSendStep step = send_step(l, k);
  const Where where{op, l, true, k};
  if (step.wait_credit) {
    launch(where, [&] { launch_wait_flag(flag(me_, l.credit_offset, step.slot), step.credit_at_least, stream); });
  }
  char* dst = base_[l.dst] + l.data_offset + step.slot * l.slot_bytes;
  if (bytes > 0 && l.transport == sch::Transport::kCopyEngine) {
    TWINSTEP_PEER_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), where);
  } else if (bytes > 0) {
    const auto blocks = static_cast<int>(std::max<std::uint32_t>(1, std::get<sch::Send>(op.body).sm_count));
    launch(where, [&] { launch_peer_copy(dst, src, bytes, blocks, stream); });
  }
  launch(where, [&] { launch_signal_flag(flag(l.dst, l.ready_offset, step.slot), step.ready_value, stream); });
}

void PeerLinks::recv(const sch::Op& op, cudaStream_t stream) {
  const std::uint32_t li = layout_.link_of_op[op.id];
  TWINSTEP_ASSERT(li != kNoLink && layout_.links[li].dst == me_, "peer recv without its link");
  const PeerLink& l = layout_.links[li];
  const std::uint64_t k = received_[li]++;
  const PeerRecvStep step = recv_step(l, k);
  const Where where{op, l, false, k};
  launch(where, [&] { launch_wait_flag(flag(me_, l.ready_offset, step.slot), step.ready_at_least, stream); });
  launch(where, [&] { launch_signal_flag(flag(l.src, l.credit_offset, step.slot), step.credit_value, stream); });
}

void* PeerLinks::next_recv_slot(std::uint32_t link) const {
  const PeerLink& l = layout_.links[link];
  return base_[me_] + l.data_offset + recv_step(l, received_[link]).slot * l.slot_bytes;
}

void PeerLinks::close(const std::function<void()>& barrier) {
  for (auto& m : imported_) m.reset();
  barrier();
  own_.reset();
  closed_ = true;
}

}  // namespace twinstep::backend
