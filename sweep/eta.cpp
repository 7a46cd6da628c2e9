// Time left in a sweep from a rate measured on simulated points (sweep/eta.hpp).
#include "sweep/eta.hpp"

#include <algorithm>

namespace twinstep::sweep {

EtaEstimator::EtaEstimator(unsigned jobs, double queued_cost)
    : jobs_(std::max(1u, jobs)), queued_cost_(std::max(0.0, queued_cost)) {}

void EtaEstimator::started(std::size_t id, double cost, double t) {
  queued_cost_ = std::max(0.0, queued_cost_ - cost);
  in_flight_[id] = {cost, t};
}

void EtaEstimator::finished(std::size_t id, double t, bool simulated) {
  const auto it = in_flight_.find(id);
  if (it == in_flight_.end()) return;
  if (simulated && it->second.cost > 0) {
    measured_cost_ += it->second.cost;
    measured_s_ += std::max(0.0, t - it->second.start);
  }
  in_flight_.erase(it);
}

double EtaEstimator::seconds_left(double t) const {
  if (measured_cost_ <= 0) return in_flight_.empty() && queued_cost_ <= 0 ? 0.0 : -1.0;
  const double rate = measured_s_ / measured_cost_;  // seconds per unit of cost on one worker
  // Work left in seconds of one worker; the longest single piece bounds the end from below (it runs on one).
  double total = queued_cost_ * rate, longest = 0;
  for (const auto& [id, f] : in_flight_) {
    const double left = std::max(0.0, f.cost * rate - (t - f.start));
    total += left;
    longest = std::max(longest, left);
  }
  return std::max(total / jobs_, longest);
}

}  // namespace twinstep::sweep
