// Best-first pruning of a sweep's simulations in rising bound order (sweep/bound_order.hpp).
#include "sweep/bound_order.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "common/assert.hpp"

namespace twinstep::sweep {

BoundOrder::BoundOrder(std::vector<Candidate> candidates, std::vector<double> best_known, std::size_t max_ahead)
    : candidates_(std::move(candidates)),
      state_(candidates_.size(), State::kWaiting),
      step_(candidates_.size()),
      groups_(best_known.size()) {
  std::size_t max_pos = 0;
  for (const Candidate& c : candidates_) {
    max_pos = std::max(max_pos, c.pos);
    if (c.group >= groups_.size()) groups_.resize(c.group + 1);
  }
  for (std::size_t g = 0; g < best_known.size(); ++g) groups_[g].best_decided = groups_[g].best_back = best_known[g];
  index_of_pos_.assign(max_pos + 1, candidates_.size());
  global_.resize(candidates_.size());
  for (std::size_t i = 0; i < candidates_.size(); ++i) {
    TWINSTEP_ASSERT(index_of_pos_[candidates_[i].pos] == candidates_.size(), "BoundOrder: point %zu given twice",
                    candidates_[i].pos);
    index_of_pos_[candidates_[i].pos] = i;
    global_[i] = i;
  }
  std::sort(global_.begin(), global_.end(), [&](std::size_t a, std::size_t b) {
    return std::tie(candidates_[a].bound_s, candidates_[a].pos) < std::tie(candidates_[b].bound_s, candidates_[b].pos);
  });
  for (const std::size_t i : global_) groups_[candidates_[i].group].order.push_back(i);
  for (Group& g : groups_) g.hopeless_from = g.order.size();
  max_ahead_ = max_ahead;
  is_ahead_.assign(candidates_.size(), false);
}

std::optional<std::size_t> BoundOrder::costliest_likely() const {
  // The points after cursor_ in rising bound order, up to the largest best step back of an open group.
  double reach = -std::numeric_limits<double>::infinity();
  for (const Group& g : groups_) {
    if (!g.closed && std::isfinite(g.best_back)) reach = std::max(reach, g.best_back);
  }
  std::optional<std::size_t> pick;
  for (std::size_t k = cursor_; k < global_.size(); ++k) {
    const std::size_t i = global_[k];
    const Candidate& c = candidates_[i];
    if (c.bound_s > reach) break;
    const Group& g = groups_[c.group];
    if (g.closed || state_[i] != State::kWaiting || c.bound_s > g.best_back) continue;
    if (!pick || c.cost > candidates_[*pick].cost) pick = i;  // ties: the lower bound first
  }
  return pick;
}

std::optional<std::size_t> BoundOrder::frontier() const {
  for (std::size_t k = cursor_; k < global_.size(); ++k) {
    const std::size_t i = global_[k];
    const Group& g = groups_[candidates_[i].group];
    if (!g.closed && state_[i] == State::kWaiting && candidates_[i].bound_s <= g.best_back) return i;
  }
  return std::nullopt;
}

std::optional<std::size_t> BoundOrder::next() {
  if (ahead_ < max_ahead_) {
    if (const auto i = costliest_likely()) {
      if (i != frontier()) {
        is_ahead_[*i] = true;
        ++ahead_;
      }
      state_[*i] = State::kRunning;
      return candidates_[*i].pos;
    }
  }
  while (cursor_ < global_.size()) {
    const std::size_t i = global_[cursor_++];
    Group& g = groups_[candidates_[i].group];
    if (g.closed || state_[i] != State::kWaiting) continue;
    // Every point back in this group comes before this one in its order: a best among them below this bound means
    // the rule prunes this point (or one before it) whatever the points still running give.
    if (candidates_[i].bound_s > g.best_back) {
      g.closed = true;
      resolve(g);
      continue;
    }
    state_[i] = State::kRunning;
    return candidates_[i].pos;
  }
  return std::nullopt;
}

void BoundOrder::finished(std::size_t pos, std::optional<double> step_s) {
  TWINSTEP_ASSERT(pos < index_of_pos_.size() && index_of_pos_[pos] < candidates_.size(),
                  "BoundOrder: point %zu is not a candidate", pos);
  const std::size_t i = index_of_pos_[pos];
  if (is_ahead_[i]) {
    is_ahead_[i] = false;
    --ahead_;
  }
  if (state_[i] == State::kDecided) {  // pruned while it ran
    ++discarded_;
    return;
  }
  TWINSTEP_ASSERT(state_[i] == State::kRunning, "BoundOrder: point %zu came back but was not handed out", pos);
  state_[i] = State::kBack;
  step_[i] = step_s;
  Group& g = groups_[candidates_[i].group];
  if (step_s) g.best_back = std::min(g.best_back, *step_s);
  resolve(g);
}

void BoundOrder::resolve(Group& g) {
  while (!g.cut && g.resolved < g.order.size()) {
    const std::size_t i = g.order[g.resolved];
    if (candidates_[i].bound_s > g.best_decided) {
      // The sequential rule's cut: this point and every later one cannot win against the group's best.
      g.cut = g.closed = true;
      for (; g.resolved < g.order.size(); ++g.resolved) {
        const std::size_t r = g.order[g.resolved];
        discarded_ += state_[r] == State::kBack;
        state_[r] = State::kDecided;
        decided_out_.push_back({candidates_[r].pos, false, g.best_decided});
        ++decided_;
      }
      return;
    }
    if (state_[i] != State::kBack) return;  // simulated by the rule: wait for it
    state_[i] = State::kDecided;
    decided_out_.push_back({candidates_[i].pos, true, g.best_decided});
    ++decided_;
    if (step_[i]) g.best_decided = std::min(g.best_decided, *step_[i]);
    ++g.resolved;
  }
}

std::vector<std::size_t> BoundOrder::take_hopeless() {
  std::vector<std::size_t> out;
  for (Group& g : groups_) {
    while (g.hopeless_from > 0) {
      const std::size_t i = g.order[g.hopeless_from - 1];
      if (state_[i] != State::kWaiting || candidates_[i].bound_s <= g.best_back) break;
      out.push_back(candidates_[i].pos);
      --g.hopeless_from;
    }
  }
  return out;
}

std::vector<BoundOrder::Decision> BoundOrder::take_decided() { return std::exchange(decided_out_, {}); }

}  // namespace twinstep::sweep
