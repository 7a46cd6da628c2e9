// Small lookups on the IR types.
#include "schedule/schedule.hpp"

#include <charconv>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "schedule/op_kind.hpp"

namespace twinstep::schedule {

namespace {
constexpr NameTable<OpKind, 6> kOpKinds{{{"compute", OpKind::kCompute},
                                         {"collective", OpKind::kCollective},
                                         {"send", OpKind::kSend},
                                         {"recv", OpKind::kRecv},
                                         {"host", OpKind::kHost},
                                         {"host_sync", OpKind::kHostSync}}};
}  // namespace

const char* kind_name(const Body& body) { return name_of(kOpKinds, kind_of(body)); }

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

std::optional<std::uint32_t> hardware_queues(const Schedule& s, const std::string& file) {
  const auto it = s.meta.find(kHardwareQueuesKey);
  if (it == s.meta.end()) return std::nullopt;
  const std::string& text = it->second;
  std::uint32_t n = 0;
  const char* end = text.data() + text.size();
  const auto [stop, ec] = std::from_chars(text.data(), end, n);
  if (text.empty() || ec != std::errc{} || stop != end || n < 1 || n > 32) {
    throw Error((file.empty() ? std::string() : file + ": ") + "meta." + kHardwareQueuesKey + " is '" + text +
                "', not an integer in [1, 32] (CUDA_DEVICE_MAX_CONNECTIONS); lower the schedule again with --cdmc N");
  }
  return n;
}

}  // namespace twinstep::schedule
