// The routing model (moe_routing.hpp): ep_split and a rank's Routing.
#include "models/lowering/moe_routing.hpp"

#include <algorithm>
#include <cmath>

namespace twinstep::models::lowering {

std::vector<std::uint64_t> ep_split(const Dims& k, std::uint64_t total) {
  const std::uint32_t e = k.ep;
  if (e == 1) return {total};
  std::vector<std::uint64_t> out(e, 0);
  std::uint64_t hot = static_cast<std::uint64_t>(std::llround(static_cast<double>(total) * k.skew / e));
  hot = std::min(hot, total);
  if (k.skew == 1.0) hot = total / e + (total % e > 0 ? 1 : 0);
  out[0] = hot;
  const std::uint64_t rest = total - hot;
  for (std::uint32_t j = 1; j < e; ++j) out[j] = rest / (e - 1) + ((j - 1) < rest % (e - 1) ? 1 : 0);
  return out;
}

Routing route(const Dims& k, std::uint32_t ep_position, std::uint64_t tokens) {
  Routing r;
  if (!k.moe) return r;
  r.dispatch_copies = ep_split(k, tokens * k.topk);
  r.combine_copies.assign(k.ep, r.dispatch_copies[ep_position]);
  // e x split[position] x t_e rows after the expert-TP all-gather.
  r.expert_rows = r.dispatch_copies[ep_position] * k.ep * k.etp;
  const std::uint64_t n = r.expert_rows, g = k.local_experts;
  r.expert_groups.assign(g, n / g);
  for (std::uint64_t i = 0; i < n % g; ++i) r.expert_groups[i] += 1;
  // flex: one copy per (token, destination rank): R = e (1 - C(E - E/e, k) / C(E, k)) under uniform routing.
  double none = 1.0;
  for (std::uint64_t i = 0; i < k.topk; ++i) {
    none *= static_cast<double>(k.experts - k.local_experts - std::min(i, k.experts - k.local_experts)) /
            static_cast<double>(k.experts - i);
  }
  const double copies_per_token = static_cast<double>(k.ep) * (1.0 - none);
  r.flex_copies = ep_split(k, static_cast<std::uint64_t>(std::llround(static_cast<double>(tokens) * copies_per_token)));
  r.flex_combine_copies.assign(k.ep, r.flex_copies[ep_position]);
  return r;
}

}  // namespace twinstep::models::lowering
