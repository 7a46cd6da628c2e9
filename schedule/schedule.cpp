// Small lookups on the IR types.
#include "schedule/schedule.hpp"

#include "common/enum_names.hpp"
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

}  // namespace twinstep::schedule
