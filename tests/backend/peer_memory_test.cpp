// Peer-mapped buffer planning for copy_engine / sm_kernel send/recv, the memory-handle encoding of the start-up
// exchange, and the trace context's transport_ran (backend/peer_memory.hpp). No GPU.
#include "backend/peer_memory.hpp"

#include "common/error.hpp"
#include "tests/catch.hpp"

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

}  // namespace

TEST_CASE("backend::peer_memory: one buffer per (comm, writer, transport) of non-NCCL recvs, largest message",
          "[backend]") {
  sch::Schedule s;
  s.world_size = 3;
  s.ranks = {0, 1, 2};
  add(s, 0, sch::Recv{0, 1, 100, 0, sch::Transport::kCopyEngine});
  add(s, 0, sch::Recv{0, 1, 300, 1, sch::Transport::kCopyEngine});
  add(s, 0, sch::Recv{0, 2, 50, 0, sch::Transport::kSmKernel, 2});
  add(s, 0, sch::Recv{1, 1, 1000, 0});                              // NCCL (PP): no peer buffer
  add(s, 0, sch::Send{0, 1, 400, 0, sch::Transport::kCopyEngine});  // the sender writes into the peer's buffer
  add(s, 1, sch::Recv{0, 0, 400, 0, sch::Transport::kCopyEngine});
  const auto b0 = plan_peer_buffers(s, 0);
  REQUIRE(b0.size() == 2);
  CHECK(b0[0] == PeerBuffer{0, 1, sch::Transport::kCopyEngine, 300});
  CHECK(b0[1] == PeerBuffer{0, 2, sch::Transport::kSmKernel, 50});
  CHECK(peer_buffer_bytes(b0) == 350);
  const auto b1 = plan_peer_buffers(s, 1);
  REQUIRE(b1.size() == 1);
  CHECK(b1[0] == PeerBuffer{0, 0, sch::Transport::kCopyEngine, 400});
  CHECK(plan_peer_buffers(s, 2).empty());
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
  CHECK_THROWS_AS(decode_handle(text.substr(0, 5)), twinstep::Error);
}

TEST_CASE("backend::peer_memory: the trace context names what ran each non-NCCL transport", "[backend]") {
  sch::Schedule s;
  add(s, 0, sch::Send{0, 1, 8, 0});
  CHECK(transports_ran(s).empty());
  add(s, 0, sch::Send{0, 1, 8, 0, sch::Transport::kCopyEngine});
  add(s, 0, sch::Recv{0, 1, 8, 0, sch::Transport::kSmKernel, 1});
  const auto ran = transports_ran(s);
  REQUIRE(ran.size() == 2);
  CHECK(ran.at("copy_engine") == "nccl");
  CHECK(ran.at("sm_kernel") == "nccl");
}
