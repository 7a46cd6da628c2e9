// Pass 2 of a pruned sweep (`--parallel auto`): which points to simulate, in what order, and which cannot win.
// Every point that fits has a lower bound on its step (pass 1: evaluate::step_lower_bound). Within a ranking group
// the points are simulated in rising order of their bound (ties in point order), and a point is simulated only if
// its bound does not exceed the best step simulated before it in that order; the first one whose bound does is
// "cannot win", and so is every later one (their bounds are no lower), all against the same best: the group's best.
// That sequential rule decides every point, whatever the number of workers and the order in which they finish:
// points are handed out ahead of that order (speculatively) when a point before them is still running, and a
// speculative result whose point the rule prunes is discarded. A decision is given out only once every point
// before it in its group is decided, so a results file holds a prefix of each group's order and a resumed sweep (its
// simulated steps as `best_known`) decides the rest as an uninterrupted one would.
// Which point is handed out next changes only the work, never a decision. Before a group has a step back, its points
// go out in rising bound order. With `max_ahead` > 0 (several workers), once a step is back, up to `max_ahead` points
// at a time may be the costliest of the points the rule may still need (not handed out, bound no more than the best
// step back in their group: the rule needs each unless a point before it, still running, comes back below its bound)
// rather than the next in order, so that the longest simulation does not start last and run alone while the other
// workers have nothing left to do; the other workers keep taking the next in order, whose steps are what prunes.
#pragma once

#include <cstddef>
#include <limits>
#include <optional>
#include <vector>

namespace twinstep::sweep {

class BoundOrder {
 public:
  struct Candidate {
    std::size_t pos = 0;    ///< The caller's id of the point (its position in the sweep); unique.
    std::size_t group = 0;  ///< Its ranking group (the caller's id).
    double bound_s = 0;     ///< Lower bound on its step (0: none known: simulated first).
    double cost = 0;        ///< Its estimated cost (max_ahead; 0: unknown, the cheapest).
  };
  /// A point decided: simulated (its own result stands) or cannot win against `best_s`, its group's best step.
  struct Decision {
    std::size_t pos = 0;
    bool simulated = false;
    double best_s = std::numeric_limits<double>::infinity();
  };

  /// `best_known[g]`: the best step already simulated in group g (a resumed sweep; infinity: none), for groups
  /// 0..best_known.size()-1; other groups start with none. `max_ahead`: how many points handed out by Candidate::cost
  /// ahead of the order may run at once (above; 0: rising bound order only).
  explicit BoundOrder(std::vector<Candidate> candidates, std::vector<double> best_known = {},
                      std::size_t max_ahead = 0);

  /// The next point to simulate: while fewer than max_ahead points run ahead of the order, the costliest the rule may
  /// still need in a group with a step back, else the next in rising bound order over all groups; none once every
  /// point is handed out or known to be unable to win.
  [[nodiscard]] std::optional<std::size_t> next();
  /// Point `pos` (handed out by next) came back: with its step when it was simulated (status ok), else none (a
  /// point that turned out not to fit or failed: it sets no best).
  void finished(std::size_t pos, std::optional<double> step_s);
  /// The decisions made since the last call, each group's in its order.
  [[nodiscard]] std::vector<Decision> take_decided();
  /// Points not handed out yet that the order will prune whatever comes back (their bound exceeds a step back in
  /// their group), each given once: a sweep's ETA drops them.
  [[nodiscard]] std::vector<std::size_t> take_hopeless();
  /// Every point decided.
  [[nodiscard]] bool done() const { return decided_ == candidates_.size(); }
  /// Points simulated ahead of the order whose results were discarded (they cannot win).
  [[nodiscard]] std::size_t discarded() const { return discarded_; }

 private:
  enum class State : unsigned char { kWaiting, kRunning, kBack, kDecided };
  struct Group {
    std::vector<std::size_t> order;                                 ///< Indices into candidates_, rising bound.
    std::size_t resolved = 0;                                       ///< order[0..resolved) decided.
    double best_decided = std::numeric_limits<double>::infinity();  ///< Best step among decided simulated points.
    double best_back = std::numeric_limits<double>::infinity();     ///< Best step among all points back.
    std::size_t hopeless_from = 0;  ///< order[hopeless_from..) was given out by take_hopeless (order.size(): none).
    bool closed = false;            ///< Its next point cannot win: nothing more is handed out.
    bool cut = false;               ///< The rest of its order was decided "cannot win".
  };
  void resolve(Group& g);
  /// The costliest point the rule may still need in a group with a step back (an index into candidates_), if any.
  [[nodiscard]] std::optional<std::size_t> costliest_likely() const;
  /// The point the order hands out next (an index into candidates_), if any.
  [[nodiscard]] std::optional<std::size_t> frontier() const;

  std::vector<Candidate> candidates_;
  std::vector<State> state_;
  std::vector<std::optional<double>> step_;
  std::vector<Group> groups_;
  std::vector<std::size_t> global_;  ///< Indices into candidates_, rising bound over all groups.
  std::size_t cursor_ = 0;           ///< Next of global_ to consider.
  std::vector<std::size_t> index_of_pos_;
  std::vector<Decision> decided_out_;
  std::size_t decided_ = 0, discarded_ = 0;
  std::size_t max_ahead_ = 0, ahead_ = 0;  ///< Points handed out ahead of the order: at most, running now.
  std::vector<bool> is_ahead_;             ///< By candidate: handed out ahead of the order and not back yet.
};

}  // namespace twinstep::sweep
