// Which host intervals contain which host instants, per thread (events.hpp): a sweep over time with the open
// intervals in a short list, since profiler ranges need not nest.
#include "calibration/trace_import/events.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <set>
#include <utility>

#include "common/assert.hpp"

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

void attach_host_side(RankEvents& ev, HostSide host) {
  TWINSTEP_ASSERT(host.launch.size() == ev.activities.size() && host.ranges.size() == host.range_names.size() &&
                      host.op_intervals.size() == host.ops.size() && host.waits.size() == host.wait_at.size(),
                  "attach_host_side: the host side does not describe these events");
  std::vector<HostInstant> launched;
  std::vector<std::size_t> launched_index;
  for (std::size_t k = 0; k < ev.activities.size(); ++k) {
    if (!host.launch[k]) continue;
    ev.activities[k].launch_ns = host.launch[k]->at_ns;
    launched.push_back(*host.launch[k]);
    launched_index.push_back(k);
  }
  const auto in_ranges = enclosing(host.ranges, launched);
  const auto in_ops = enclosing(host.op_intervals, launched);
  for (std::size_t q = 0; q < launched.size(); ++q) {
    auto& a = ev.activities[launched_index[q]];
    for (const std::size_t ri : in_ranges[q]) {
      a.ranges.push_back(host.range_names[ri]);
      a.range_starts.push_back(host.ranges[ri].start_ns);
    }
    if (!in_ops[q].empty()) a.op = host.ops[in_ops[q].back()];  // the innermost op: the one that launched it
  }
  const auto wait_ranges = enclosing(host.ranges, host.wait_at);
  for (std::size_t w = 0; w < host.waits.size(); ++w) {
    for (const std::size_t ri : wait_ranges[w]) {
      host.waits[w].ranges.push_back(host.range_names[ri]);
      host.waits[w].range_starts.push_back(host.ranges[ri].start_ns);
    }
  }
  std::stable_sort(ev.activities.begin(), ev.activities.end(),
                   [](const GpuActivity& a, const GpuActivity& b) { return a.start_ns < b.start_ns; });
  std::stable_sort(host.waits.begin(), host.waits.end(),
                   [](const HostWait& a, const HostWait& b) { return a.start_ns < b.start_ns; });
  ev.waits = std::move(host.waits);
  const std::set<std::string> names(host.range_names.begin(), host.range_names.end());
  ev.range_names.assign(names.begin(), names.end());
}

}  // namespace twinstep::calibration::trace_import
