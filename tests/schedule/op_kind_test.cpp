// OpKind (schedule/op_kind.hpp): one kind per Body alternative, in the variant's order, and its JSON word.
#include "schedule/op_kind.hpp"

#include <string>
#include <variant>

#include "tests/catch.hpp"

using namespace twinstep::schedule;

TEST_CASE("schedule::kind_of: every Body alternative has its own kind and JSON word", "[ir]") {
  const Body bodies[] = {Compute{}, Collective{}, Send{}, Recv{}, Host{}, HostSync{}};
  const OpKind kinds[] = {OpKind::kCompute, OpKind::kCollective, OpKind::kSend,
                          OpKind::kRecv,    OpKind::kHost,       OpKind::kHostSync};
  const char* words[] = {"compute", "collective", "send", "recv", "host", "host_sync"};
  static_assert(std::variant_size_v<Body> == 6, "a new op kind needs a row here");
  for (std::size_t i = 0; i < 6; ++i) {
    CAPTURE(i);
    CHECK(bodies[i].index() == i);
    CHECK(kind_of(bodies[i]) == kinds[i]);
    CHECK(std::string(kind_name(bodies[i])) == words[i]);
  }
}
