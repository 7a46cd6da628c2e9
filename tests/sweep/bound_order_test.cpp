// sweep::BoundOrder against the sequential rule it implements: every group's points in rising bound order, each
// simulated while its bound is no more than the best step simulated before it, the rest pruned against that best;
// the same decisions whatever the number of workers, the order in which they finish, and a resumed best; points
// called hopeless (dropped from the ETA) are never handed out and are pruned.
#include "sweep/bound_order.hpp"

#include <algorithm>
#include <cstddef>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "tests/catch.hpp"

using namespace twinstep;

namespace {

struct Point {
  std::size_t group = 0;
  double bound_s = 0;
  std::optional<double> step_s;  ///< none: the point turns out not to fit.
  double cost = 0;               ///< Its estimated cost (max_ahead).
};

/// The sequential rule written out: {pos: simulated?} and each pruned point's best.
std::map<std::size_t, sweep::BoundOrder::Decision> sequential(const std::vector<Point>& points,
                                                              const std::vector<double>& best_known) {
  std::map<std::size_t, sweep::BoundOrder::Decision> out;
  std::map<std::size_t, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < points.size(); ++i) groups[points[i].group].push_back(i);
  for (auto& [g, members] : groups) {
    std::stable_sort(members.begin(), members.end(),
                     [&](std::size_t a, std::size_t b) { return points[a].bound_s < points[b].bound_s; });
    double best = g < best_known.size() ? best_known[g] : std::numeric_limits<double>::infinity();
    bool cut = false;
    for (const std::size_t i : members) {
      cut = cut || points[i].bound_s > best;
      out[i] = {i, !cut, best};
      if (!cut && points[i].step_s) best = std::min(best, *points[i].step_s);
    }
  }
  return out;
}

/// Runs BoundOrder with `workers` at once, each point's result back after `delay(pos)` ticks; checks every decision
/// against the sequential rule and that a decision never comes before the ones ahead of it in its group.
std::size_t run(const std::vector<Point>& points, unsigned workers, std::mt19937& rng,
                const std::vector<double>& best_known = {}, std::size_t max_ahead = 0) {
  std::vector<sweep::BoundOrder::Candidate> candidates;
  for (std::size_t i = 0; i < points.size(); ++i) {
    candidates.push_back({i, points[i].group, points[i].bound_s, points[i].cost});
  }
  sweep::BoundOrder order(candidates, best_known, max_ahead);
  const auto want = sequential(points, best_known);
  std::map<std::size_t, sweep::BoundOrder::Decision> got;
  std::vector<std::size_t> running;
  std::set<std::size_t> hopeless, handed_out;
  auto take = [&] {
    for (const auto& d : order.take_decided()) {
      INFO("point " << d.pos);
      CHECK(got.count(d.pos) == 0);
      got[d.pos] = d;
      const auto& w = want.at(d.pos);
      CHECK(d.simulated == w.simulated);
      if (!d.simulated) CHECK(d.best_s == w.best_s);
    }
  };
  for (;;) {
    while (running.size() < workers) {
      const auto pos = order.next();
      take();
      if (!pos) break;
      running.push_back(*pos);
      handed_out.insert(*pos);
    }
    if (running.empty()) break;
    // Any one of the running points comes back first.
    const std::size_t k = std::uniform_int_distribution<std::size_t>(0, running.size() - 1)(rng);
    const std::size_t pos = running[k];
    running.erase(running.begin() + static_cast<std::ptrdiff_t>(k));
    order.finished(pos, points[pos].step_s);
    for (const std::size_t h : order.take_hopeless()) CHECK(hopeless.insert(h).second);
    take();
  }
  CHECK(order.done());
  CHECK(got.size() == points.size());
  // A point called hopeless is never handed out and is pruned.
  for (const std::size_t h : hopeless) {
    CHECK(handed_out.count(h) == 0);
    CHECK_FALSE(want.at(h).simulated);
  }
  return order.discarded();
}

}  // namespace

TEST_CASE("sweep::BoundOrder: one worker simulates exactly the points the sequential rule does, in bound order",
          "[sweep]") {
  // Group 0: bounds 1, 2, 3, 4, 5; steps 6, 2.5, 3.5, 9, 7: after 1 (step 6) and 2 (2.5), bound 3 > 2.5 prunes 3, 4, 5.
  // Group 1: no bound (0) first, and a point that does not fit (no step) sets no best.
  const std::vector<Point> points = {{0, 4, 9},  {0, 1, 6}, {0, 3, 3.5},          {0, 2, 2.5},
                                     {0, 5, 7},  {1, 0, 4}, {1, 1, std::nullopt}, {1, 3, 3.9},
                                     {1, 4.5, 5}};
  std::vector<sweep::BoundOrder::Candidate> candidates;
  for (std::size_t i = 0; i < points.size(); ++i) candidates.push_back({i, points[i].group, points[i].bound_s});
  sweep::BoundOrder order(candidates);
  std::vector<std::size_t> simulated;
  std::set<std::size_t> hopeless;
  while (const auto pos = order.next()) {
    simulated.push_back(*pos);
    order.finished(*pos, points[*pos].step_s);
    for (const std::size_t h : order.take_hopeless()) hopeless.insert(h);
  }
  // 8 is known to be pruned once 5 is back (step 4 < 4.5) while 7 (bound 3) is still to run; 2, 0 and 4 are decided
  // as soon as 3 is back (2.5 < 3), never merely hopeless.
  CHECK(hopeless == std::set<std::size_t>{8});
  // Rising bound over both groups: 5 (0), 1 and 6 (1), 3 (2), 7 (3); 2 is pruned (3 > 2.5), 8 too (4.5 > 3.9).
  CHECK(simulated == std::vector<std::size_t>{5, 1, 6, 3, 7});
  std::map<std::size_t, sweep::BoundOrder::Decision> got;
  for (const auto& d : order.take_decided()) got[d.pos] = d;
  REQUIRE(got.size() == points.size());
  for (const std::size_t pruned : {0, 2, 4}) {
    CHECK_FALSE(got[pruned].simulated);
    CHECK(got[pruned].best_s == 2.5);
  }
  CHECK_FALSE(got[8].simulated);
  CHECK(got[8].best_s == 3.9);
  CHECK(order.discarded() == 0);
  std::mt19937 rng(1);
  CHECK(run(points, 1, rng) == 0);
}

TEST_CASE("sweep::BoundOrder: any number of workers finishing in any order decides the same, discarding ahead-runs",
          "[sweep]") {
  std::mt19937 rng(7);
  std::size_t discarded = 0;
  for (int trial = 0; trial < 200; ++trial) {
    // Steps at least their bounds (a bound holds), ties in bound included.
    std::vector<Point> points;
    const std::size_t n = std::uniform_int_distribution<std::size_t>(1, 30)(rng);
    for (std::size_t i = 0; i < n; ++i) {
      Point p;
      p.group = std::uniform_int_distribution<std::size_t>(0, 2)(rng);
      p.bound_s = std::uniform_int_distribution<int>(0, 10)(rng);
      if (std::uniform_int_distribution<int>(0, 5)(rng) != 0) {
        p.step_s = p.bound_s + std::uniform_int_distribution<int>(0, 8)(rng);
      }
      p.cost = std::uniform_int_distribution<int>(0, 4)(rng);
      points.push_back(p);
    }
    for (const unsigned workers : {1u, 2u, 4u}) {
      const std::size_t d = run(points, workers, rng);
      if (workers == 1) CHECK(d == 0);
      discarded += d;
      // Costliest ahead of the order hands the points out in another order: the same decisions.
      (void)run(points, workers, rng, {}, workers - 1);
      (void)run(points, workers, rng, {}, workers);
    }
    // A resumed sweep: the best already simulated in group 1.
    (void)run(points, 2, rng, {std::numeric_limits<double>::infinity(), 6.0});
    (void)run(points, 2, rng, {std::numeric_limits<double>::infinity(), 6.0}, 1);
  }
  CHECK(discarded > 0);  // the trials did run points ahead of the order that the order then pruned
}

TEST_CASE("sweep::BoundOrder: the costliest point the rule may still need ahead of the order, one at a time",
          "[sweep]") {
  // One group, bounds 1..6; costs 1, 1, 1, 9, 1, 20. The first two go out in bound order (no step back yet). Point
  // 0's step 4.5 is back: of the points not handed out, 2, 3 and 4 (bounds 3, 4, 4.5) may still be needed, 5 (bound
  // 6 > 4.5) cannot: the costliest of the three, 3, goes out ahead of the order; while it runs (max_ahead 1) the next
  // in order, 2, goes out, not 4.
  const std::vector<Point> points = {{0, 1, 4.5, 1}, {0, 2, 5, 1},   {0, 3, 3.5, 1},
                                     {0, 4, 4.2, 9}, {0, 4.5, 5, 1}, {0, 6, 7, 20}};
  std::vector<sweep::BoundOrder::Candidate> candidates;
  for (std::size_t i = 0; i < points.size(); ++i) {
    candidates.push_back({i, points[i].group, points[i].bound_s, points[i].cost});
  }
  sweep::BoundOrder order(candidates, {}, 1);
  CHECK(order.next() == std::optional<std::size_t>(0));
  CHECK(order.next() == std::optional<std::size_t>(1));
  order.finished(0, points[0].step_s);
  CHECK(order.next() == std::optional<std::size_t>(3));
  CHECK(order.next() == std::optional<std::size_t>(2));
  order.finished(2, points[2].step_s);  // 3.5: 4 (bound 4.5) and 3 (bound 4, running) cannot win any more
  CHECK(order.next() == std::nullopt);
  order.finished(1, points[1].step_s);
  order.finished(3, points[3].step_s);
  CHECK(order.done());
  std::map<std::size_t, bool> simulated;
  for (const auto& d : order.take_decided()) simulated[d.pos] = d.simulated;
  CHECK(simulated == std::map<std::size_t, bool>{{0, true}, {1, true}, {2, true}, {3, false}, {4, false}, {5, false}});
  CHECK(order.discarded() == 1);  // 3 ran ahead of the order and was pruned
  // Without max_ahead the same points in bound order: 2 after 1, never 3.
  sweep::BoundOrder plain(candidates);
  CHECK(plain.next() == std::optional<std::size_t>(0));
  CHECK(plain.next() == std::optional<std::size_t>(1));
  plain.finished(0, points[0].step_s);
  CHECK(plain.next() == std::optional<std::size_t>(2));
}
