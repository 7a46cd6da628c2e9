// The time left in a running sweep. Points differ in cost by orders of magnitude (a 1-rank analytic point vs a
// 1024-rank flow point), so each point's time is predicted from its estimated cost (about the ops it simulates)
// with time = a * cost^b, fitted by least squares in log-log on the points that were simulated so far. Points
// rejected or found not to fit come back in microseconds whatever their estimated cost: counting them as work done
// made the old estimate several times too low, so they are left out of the fit. The fit's exponent matters because
// the sweep hands out the costliest points first and time grows faster than the cost estimate (cost^1.52 on the
// Qwen3 sample of docs/sweep.md): a plain seconds-per-cost rate measured on the first, large points overestimated
// the small ones left at the end 2-3x. Points in flight count with the part of them not yet done;
// `jobs` workers share what is left, and the longest single point left bounds the end from below.
#pragma once

#include <cstddef>
#include <map>

namespace twinstep::sweep {

class EtaEstimator {
 public:
  explicit EtaEstimator(unsigned jobs);

  /// Point `id` of estimated cost `cost` (> 0) is to be evaluated.
  void queued(std::size_t id, double cost);

  /// Point `id` was handed to a worker at time `t` (seconds, any fixed origin).
  void started(std::size_t id, double t);

  /// Point `id` came back at time `t`. `simulated`: it was lowered and simulated in full (status ok), so its time
  /// enters the fit; otherwise (rejected, does not fit, error) its time says nothing about the others'.
  void finished(std::size_t id, double t, bool simulated);

  /// Seconds left at time `t`, or a negative value while unknown (no simulated point back yet).
  [[nodiscard]] double seconds_left(double t) const;

 private:
  struct Pending {
    double cost = 0, start = -1;  ///< start < 0: not handed out yet.
  };
  unsigned jobs_;
  std::map<std::size_t, Pending> pending_;
  /// Sums of the fit over simulated points: count, log cost, log seconds, their squares and product.
  double n_ = 0, sx_ = 0, sy_ = 0, sxx_ = 0, sxy_ = 0;
};

}  // namespace twinstep::sweep
