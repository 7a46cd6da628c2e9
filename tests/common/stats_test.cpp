// median (common/stats.hpp): the one median of doubles (fits, step times, clocks) and of integer nanoseconds
// (measured and imported traces' per-op times).
#include "common/stats.hpp"

#include <cstdint>
#include <vector>

#include "tests/catch.hpp"

using twinstep::median;

TEST_CASE("median: the middle value, or the mean of the two middle ones", "[stats]") {
  CHECK(median(std::vector<double>{}) == 0.0);
  CHECK(median(std::vector<double>{3.0}) == 3.0);
  CHECK(median(std::vector<double>{5.0, 1.0, 3.0}) == 3.0);  // unsorted input
  CHECK(median(std::vector<double>{4.0, 1.0, 2.0, 3.0}) == 2.5);
  const std::vector<double> samples{9.0, 1.0};
  CHECK(median(samples) == 5.0);
  CHECK(samples == std::vector<double>{9.0, 1.0});  // taken by value: the caller's order is kept
}

TEST_CASE("median of integers: the two middle values' sum halved by integer division", "[stats]") {
  CHECK(median(std::vector<std::int64_t>{}) == 0);
  CHECK(median(std::vector<std::int64_t>{7, 1, 4}) == 4);
  CHECK(median(std::vector<std::int64_t>{10, 1, 2, 40}) == 6);  // (2 + 10) / 2
  CHECK(median(std::vector<std::int64_t>{1, 2}) == 1);          // 3 / 2
  CHECK(median(std::vector<std::int64_t>{-3, -2}) == -2);       // -5 / 2 rounds toward zero
}
