// The tp_comm_overlap ring exchange as a hand-built schedule, shared by the backend's planning and GPU tests; built
// with the one schedule builder (schedule/builder.hpp). Also the layer tag the GPU tests key their data on.
#pragma once

#include <cstdint>
#include <string>

#include "schedule/builder.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::backend::test {

/// Tags with only the layer set (the backend's GPU tests key their data hooks' reference values on it).
inline schedule::Tags layer_tag(int layer) {
  schedule::Tags t;
  t.layer = layer;
  return t;
}

/// The tp_comm_overlap pattern on two ranks, streams compute, tp, tx and rx and communicator 0 = "world": on each
/// rank a send to the peer on stream "tx" then a recv from it on "rx", `rounds` times, each round after a GEMM; the
/// second round's send and recv carry `tag_of_second`. Sends and recvs carry tags.layer 1 (the GPU tests' data key).
inline schedule::Schedule ring_exchange(std::uint64_t bytes, int rounds, std::uint32_t tag_of_second = 0) {
  schedule::ScheduleBuilder b(2, {{"compute", 0}, {"tp", -1}, {"tx", -1}, {"rx", -1}});
  b.world();
  for (int k = 0; k < rounds; ++k) {
    const std::uint32_t tag = k == 1 ? tag_of_second : 0;
    for (schedule::RankId r = 0; r < 2; ++r) {
      const auto g = b.gemm(r, "gemm" + std::to_string(k), 0, 2048, 2048, 2048);
      b.add(r, "send" + std::to_string(k), 2, schedule::Send{0, 1 - r, bytes, tag}, {g}, layer_tag(1));
      b.add(r, "recv" + std::to_string(k), 3, schedule::Recv{0, 1 - r, bytes, tag}, {}, layer_tag(1));
    }
  }
  return b.take();
}

}  // namespace twinstep::backend::test
