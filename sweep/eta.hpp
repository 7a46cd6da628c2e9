// The time left in a running sweep. Points differ in cost by orders of magnitude (a 1-rank analytic point vs a
// 1024-rank flow point), so the estimate is in units of each point's estimated cost (ops it simulates), converted to
// seconds by a rate measured on the points that were simulated: points rejected or found not to fit come back in
// milliseconds whatever their estimated cost, and counting them as work done made the old estimate several times
// too low. Points in flight count with the part of them not yet done; `jobs` workers share what is left.
#pragma once

#include <cstddef>
#include <map>

namespace twinstep::sweep {

class EtaEstimator {
 public:
  /// `jobs` workers; `queued_cost`: the estimated cost of every point still to hand out.
  EtaEstimator(unsigned jobs, double queued_cost);

  /// Point `id` of estimated cost `cost` was handed to a worker at time `t` (seconds, any fixed origin).
  void started(std::size_t id, double cost, double t);

  /// Point `id` came back at time `t`. `simulated`: it was lowered and simulated in full (status ok), so its time
  /// measures the rate; otherwise (rejected, does not fit, error) its time says nothing about the others'.
  void finished(std::size_t id, double t, bool simulated);

  /// Seconds left at time `t`, or a negative value while unknown (no simulated point back yet).
  [[nodiscard]] double seconds_left(double t) const;

 private:
  struct InFlight {
    double cost = 0, start = 0;
  };
  unsigned jobs_;
  double queued_cost_;
  double measured_cost_ = 0, measured_s_ = 0;
  std::map<std::size_t, InFlight> in_flight_;
};

}  // namespace twinstep::sweep
