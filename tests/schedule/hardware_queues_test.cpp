// schedule::hardware_queues (schedule/schedule.hpp): the one reader of the schedule's meta
// `cuda_device_max_connections`, used by the simulator, the critical path and `twinstep run`.
#include <string>

#include "common/error.hpp"
#include "schedule/schedule.hpp"
#include "tests/catch.hpp"

using namespace twinstep::schedule;

namespace {
Schedule with_queues(const std::string& value) {
  Schedule s;
  s.meta[kHardwareQueuesKey] = value;
  return s;
}
}  // namespace

TEST_CASE("schedule::hardware_queues: unset means the schedule does not say", "[ir]") {
  Schedule s;
  s.meta["model"] = "llama3-8b";
  CHECK_FALSE(hardware_queues(s).has_value());
}

TEST_CASE("schedule::hardware_queues: integers in [1, 32] are read", "[ir]") {
  CHECK(hardware_queues(with_queues("1")) == 1u);
  CHECK(hardware_queues(with_queues("8")) == 8u);
  CHECK(hardware_queues(with_queues("32")) == 32u);
}

TEST_CASE("schedule::hardware_queues: a malformed value names the field and the fix", "[ir]") {
  for (const char* bad : {"0", "33", "", "-1", "one", "1.5", "8 ", " 8", "99999999999"}) {
    CAPTURE(bad);
    const std::string value = bad;
    CHECK_THROWS_WITH(hardware_queues(with_queues(value)),
                      "meta.cuda_device_max_connections is '" + value +
                          "', not an integer in [1, 32] (CUDA_DEVICE_MAX_CONNECTIONS); lower the schedule again "
                          "with --cdmc N");
  }
  CHECK_THROWS_WITH(hardware_queues(with_queues("0"), "step.json"),
                    twinstep_contains("step.json: meta.cuda_device_max_connections is '0'"));
  CHECK_THROWS_AS(hardware_queues(with_queues("0")), twinstep::Error);
}
