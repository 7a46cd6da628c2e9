// The sweep's time left: fitted on simulated points only, shared by the workers, in-flight work counted.
#include "sweep/eta.hpp"

#include <cmath>

#include "tests/catch.hpp"

using twinstep::sweep::EtaEstimator;

TEST_CASE("sweep::EtaEstimator: points that come back at once do not make the estimate low", "[sweep]") {
  // Issue 20 item 7 (the ETA ~4x low): 2 workers; 100 points of cost 1 that turn out not to fit come back at once,
  // 8 simulated points of cost 1 take 10 s each. After the first two simulated ones (t = 10 s) six are left:
  // 6 x 10 s over 2 workers = 30 s. Counting the instant points as work done said 10 s x 6 / 102 ~ 0.6 s.
  EtaEstimator eta(2);
  for (std::size_t i = 0; i < 108; ++i) eta.queued(i, 1);
  CHECK(eta.seconds_left(0) < 0);  // unknown before a simulated point is back
  for (std::size_t i = 0; i < 100; ++i) {
    eta.started(i, 0);
    eta.finished(i, 0.001, false);
  }
  CHECK(eta.seconds_left(0.001) < 0);
  eta.started(100, 0);
  eta.started(101, 0);
  eta.finished(100, 10, true);
  eta.finished(101, 10, true);
  CHECK(eta.seconds_left(10) == Approx(30.0));
  // Two more handed out at 10 s; at 15 s each has 5 s left: (4 x 10 + 2 x 5) / 2 = 25 s.
  eta.started(102, 10);
  eta.started(103, 10);
  CHECK(eta.seconds_left(15) == Approx(25.0));
}

TEST_CASE("sweep::EtaEstimator: time = a cost^b fitted on the simulated points", "[sweep]") {
  // Simulated: cost 1 in 1 s, cost 4 in 8 s: b = 1.5, a = 1. Left: cost 16 (64 s) and cost 2 (2^1.5 s) on one
  // worker. A seconds-per-cost rate (9 s / 5) would say 18 x 1.8 = 32.4 s.
  EtaEstimator eta(1);
  eta.queued(0, 1);
  eta.queued(1, 4);
  eta.queued(2, 16);
  eta.queued(3, 2);
  eta.started(0, 0);
  eta.finished(0, 1, true);
  eta.started(1, 1);
  eta.finished(1, 9, true);
  CHECK(eta.seconds_left(9) == Approx(64 + std::pow(2.0, 1.5)));
  // On 4 workers the cost-16 point, in flight since 9 s, bounds the end: 64 s, not (64 + 2.8) / 4.
  EtaEstimator four(4);
  four.queued(0, 1);
  four.queued(1, 4);
  four.queued(2, 16);
  four.started(0, 0);
  four.finished(0, 1, true);
  four.started(1, 0);
  four.finished(1, 8, true);
  four.started(2, 9);
  CHECK(four.seconds_left(9) == Approx(64.0));
  CHECK(four.seconds_left(41) == Approx(32.0));
  four.finished(2, 73, true);
  CHECK(four.seconds_left(73) == 0);  // nothing left
}
