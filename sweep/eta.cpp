// Time left in a sweep from a power law of the estimated cost fitted on simulated points (sweep/eta.hpp).
#include "sweep/eta.hpp"

#include <algorithm>
#include <cmath>

namespace twinstep::sweep {

EtaEstimator::EtaEstimator(unsigned jobs) : jobs_(std::max(1u, jobs)) {}

void EtaEstimator::queued(std::size_t id, double cost) { pending_[id] = {cost, -1}; }

void EtaEstimator::started(std::size_t id, double t) {
  const auto it = pending_.find(id);
  if (it != pending_.end()) it->second.start = t;
}

void EtaEstimator::finished(std::size_t id, double t, bool simulated) {
  const auto it = pending_.find(id);
  if (it == pending_.end()) return;
  const double seconds = t - it->second.start;
  if (simulated && it->second.cost > 0 && it->second.start >= 0 && seconds > 0) {
    const double x = std::log(it->second.cost), y = std::log(seconds);
    n_ += 1;
    sx_ += x;
    sy_ += y;
    sxx_ += x * x;
    sxy_ += x * y;
  }
  pending_.erase(it);
}

double EtaEstimator::seconds_left(double t) const {
  if (pending_.empty()) return 0;
  if (n_ == 0) return -1;
  // log(seconds) = a + b log(cost); with one cost measured so far, time proportional to cost (b = 1).
  const double var = sxx_ - sx_ * sx_ / n_;
  const double b = var > 1e-12 ? (sxy_ - sx_ * sy_ / n_) / var : 1.0;
  const double a = (sy_ - b * sx_) / n_;
  double total = 0, longest = 0;
  for (const auto& [id, p] : pending_) {
    const double predicted = std::exp(a + b * std::log(p.cost));
    const double left = p.start < 0 ? predicted : std::max(0.0, predicted - (t - p.start));
    total += left;
    if (p.start >= 0) longest = std::max(longest, left);
  }
  return std::max(total / jobs_, longest);
}

}  // namespace twinstep::sweep
