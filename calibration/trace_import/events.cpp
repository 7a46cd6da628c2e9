// Which host intervals contain which host instants, per thread (events.hpp): a sweep over time with the open
// intervals in a short list, since profiler ranges need not nest.
#include "calibration/trace_import/events.hpp"

#include <algorithm>
#include <map>
#include <numeric>

namespace twinstep::calibration::trace_import {

std::vector<std::vector<std::size_t>> enclosing(const std::vector<HostInterval>& intervals,
                                                const std::vector<HostInstant>& instants) {
  std::vector<std::vector<std::size_t>> out(instants.size());
  std::map<std::uint64_t, std::vector<std::size_t>> iv_by_thread;
  std::map<std::uint64_t, std::vector<std::size_t>> at_by_thread;
  for (std::size_t i = 0; i < intervals.size(); ++i) iv_by_thread[intervals[i].thread].push_back(i);
  for (std::size_t i = 0; i < instants.size(); ++i) at_by_thread[instants[i].thread].push_back(i);
  for (auto& [thread, queries] : at_by_thread) {
    auto& ivs = iv_by_thread[thread];
    std::sort(ivs.begin(), ivs.end(), [&](std::size_t a, std::size_t b) {
      return intervals[a].start_ns != intervals[b].start_ns ? intervals[a].start_ns < intervals[b].start_ns : a < b;
    });
    std::sort(queries.begin(), queries.end(),
              [&](std::size_t a, std::size_t b) { return instants[a].at_ns < instants[b].at_ns; });
    std::vector<std::size_t> open;  // by start time
    std::size_t next = 0;
    for (const std::size_t q : queries) {
      const Nanos t = instants[q].at_ns;
      while (next < ivs.size() && intervals[ivs[next]].start_ns <= t) open.push_back(ivs[next++]);
      std::erase_if(open, [&](std::size_t i) { return intervals[i].end_ns < t; });
      out[q] = open;
    }
  }
  return out;
}

}  // namespace twinstep::calibration::trace_import
