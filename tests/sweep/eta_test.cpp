// The sweep's time left: measured on simulated points only, shared by the workers, in-flight work counted.
#include "sweep/eta.hpp"

#include "tests/catch.hpp"

using twinstep::sweep::EtaEstimator;

TEST_CASE("sweep::EtaEstimator: points that come back at once do not make the estimate low", "[sweep]") {
  // Issue 20 item 7 (the ETA ~4x low): 2 workers; 100 points of cost 1 that turn out not to fit come back at once,
  // 8 simulated points of cost 1 take 10 s each. After the first two simulated ones (t = 10 s) six are left:
  // 6 x 10 s over 2 workers = 30 s. Counting the instant points as work done said 10 s x 6 / 102 ~ 0.6 s.
  EtaEstimator eta(2, 108);
  CHECK(eta.seconds_left(0) < 0);  // unknown before a simulated point is back
  for (std::size_t i = 0; i < 100; ++i) {
    eta.started(i, 1, 0);
    eta.finished(i, 0.001, false);
  }
  CHECK(eta.seconds_left(0.001) < 0);
  eta.started(100, 1, 0);
  eta.started(101, 1, 0);
  eta.finished(100, 10, true);
  eta.finished(101, 10, true);
  CHECK(eta.seconds_left(10) == Approx(30.0));
  // Two more handed out at 10 s; at 15 s each has 5 s left: (4 x 10 + 2 x 5) / 2 = 25 s.
  eta.started(102, 1, 10);
  eta.started(103, 1, 10);
  CHECK(eta.seconds_left(15) == Approx(25.0));
}

TEST_CASE("sweep::EtaEstimator: costs weigh points, and one long point left bounds the end", "[sweep]") {
  // Rate from one simulated point: cost 2 in 4 s = 2 s per unit. Left: one point of cost 50 in flight since 4 s
  // (100 s) and cost 2 queued (4 s) on 4 workers: the long point alone takes 100 s, more than 104 s / 4.
  EtaEstimator eta(4, 54);
  eta.started(0, 2, 0);
  eta.finished(0, 4, true);
  eta.started(1, 50, 4);
  CHECK(eta.seconds_left(4) == Approx(100.0));
  CHECK(eta.seconds_left(54) == Approx(50.0));
  eta.finished(1, 104, true);  // the rate is now (4 + 100) / 52 = 2 s per unit again
  CHECK(eta.seconds_left(104) == Approx(2 * 2.0 / 4));
}
