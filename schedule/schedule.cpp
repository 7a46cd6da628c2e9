// Small lookups on the IR types.
#include "schedule/schedule.hpp"

#include <type_traits>

namespace twinstep::schedule {

const char* kind_name(const Body& body) {
  return std::visit(
      [](const auto& b) -> const char* {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Compute>) return "compute";
        if constexpr (std::is_same_v<T, Collective>) return "collective";
        if constexpr (std::is_same_v<T, Send>) return "send";
        if constexpr (std::is_same_v<T, Recv>) return "recv";
        if constexpr (std::is_same_v<T, Host>) return "host";
        if constexpr (std::is_same_v<T, HostSync>) return "host_sync";
      },
      body);
}

std::optional<StreamId> find_stream(const Schedule& s, const std::string& name) {
  for (std::size_t i = 0; i < s.streams.size(); ++i) {
    if (s.streams[i].name == name) return static_cast<StreamId>(i);
  }
  return std::nullopt;
}

int rank_in(const Communicator& comm, RankId rank) {
  for (std::size_t i = 0; i < comm.members.size(); ++i) {
    if (comm.members[i] == rank) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace twinstep::schedule
