// Order statistics of measurement samples (calibration fits, measured step times, device benchmarks, per-op times of
// measured and imported traces).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

namespace twinstep {

/// The median: the middle value, or the mean of the two middle values for an even count (integers: their sum halved
/// as integer division does, e.g. nanoseconds); 0 for no values.
template <class T>
[[nodiscard]] T median(std::vector<T> values) {
  static_assert(std::is_arithmetic_v<T>, "median of numbers");
  if (values.empty()) return T{};
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  if (n % 2 == 1) return values[n / 2];
  if constexpr (std::is_integral_v<T>) {
    return (values[n / 2 - 1] + values[n / 2]) / 2;
  } else {
    return T(0.5) * (values[n / 2 - 1] + values[n / 2]);
  }
}

}  // namespace twinstep
