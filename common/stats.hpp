// Order statistics of measurement samples (calibration fits, measured step times, device benchmarks).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace twinstep {

/// The median: the middle value, or the mean of the two middle values for an even count; 0 for no values.
[[nodiscard]] inline double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace twinstep
