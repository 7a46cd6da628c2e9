// The sweep grid: what a `twinstep sweep` covers (models, clusters, GPU counts, batch, sequence length, layouts,
// overlap variants, dispatchers, fidelity), its expansion into a deterministic list of points, Megatron's layout
// rules checked before anything is lowered, the canonical point key used for resume and merge, and shards.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "models/run_config.hpp"
#include "sim/simulate.hpp"

namespace twinstep::sweep {

/// One parallel layout. dp is derived: gpus / (tp * pp * cp).
struct Layout {
  std::uint32_t tp = 1, pp = 1, vpp = 1, cp = 1, ep = 1, dp = 1, mbs = 1;
  /// "tp2 pp4 vpp1 cp1 ep1 dp8 mbs1".
  [[nodiscard]] std::string describe() const;
  [[nodiscard]] bool operator==(const Layout&) const = default;
};

/// One configuration to evaluate. `index` is its position in the full expanded list (stable for a grid, so shards
/// and resumed runs agree on it); invalid_reason is non-empty when a rule rejected it before lowering.
struct Point {
  std::size_t index = 0;
  std::string model, cluster, profile, base_config;
  models::OverlapVariant overlap;
  sim::Fidelity fidelity = sim::Fidelity::kAnalytic;
  models::TokenDispatcher dispatcher = models::TokenDispatcher::kAllToAll;
  /// The SM clock model (evaluate::Options::clock); nullopt: the profile's clock_model.mode, as in predict. In the
  /// point's key only when set.
  std::optional<sim::ClockMode> clock_model;
  std::uint32_t gpus = 0, gbs = 0, seq = 0;
  Layout layout;
  std::string invalid_reason;
};

/// The grid. Lists are swept as a cartesian product; with auto_layout the tp..ep lists are ignored and every
/// layout valid under Megatron's rules is generated (mbs_list still applies).
struct Spec {
  std::vector<std::string> models, clusters;
  std::vector<std::uint32_t> gpus;
  std::vector<std::uint32_t> gbs{512}, seq{4096}, mbs{1};
  std::vector<std::uint32_t> tp{1}, pp{1}, vpp{1}, cp{1}, ep{1};
  bool auto_layout = false;
  std::vector<models::OverlapVariant> overlaps{models::OverlapVariant{}};
  std::vector<models::TokenDispatcher> dispatchers{models::TokenDispatcher::kAllToAll};
  std::vector<sim::Fidelity> fidelities{sim::default_fidelity()};
  std::string profile;                        ///< Calibration profile JSON; empty = datasheet defaults.
  std::string base_config;                    ///< Run config JSON every point starts from; empty = built-in defaults.
  std::optional<sim::ClockMode> clock_model;  ///< Point::clock_model of every point.
};

/// Parses a sweep file: {"models": [...], "clusters": [...], "gpus": [...], "gbs": [...], "seq": [...],
/// "mbs": [...], "parallel": "auto" | {"tp": [...], "pp": [...], "vpp": [...], "cp": [...], "ep": [...]},
/// "overlap": [...], "dispatcher": [...], "fidelity": [...], "profile": "...", "config": "...", "clock_model":
/// "none" | "power-cap"}. Scalars are
/// accepted where lists are. Unknown fields and wrong types throw ParseError naming `source` and the field.
[[nodiscard]] Spec spec_from_json(const std::string& text, const std::string& source);

/// Expands the grid in a fixed order (model, cluster, fidelity, gpus, gbs, seq, layout, dispatcher, overlap).
/// Points that break a layout rule are kept with invalid_reason set. Throws Error for an empty list, an
/// unknown model or cluster id, or a bad profile/config path.
[[nodiscard]] std::vector<Point> expand(const Spec& spec);

/// Why `p` cannot run (Megatron's divisibility rules, cluster size), or "" when the cheap rules pass (the lowering
/// and the memory estimate decide the rest). `gpus_per_node` bounds TP when `tp_within_node`.
struct ModelShape {
  std::uint32_t layers = 0, heads = 0, query_groups = 0, experts = 0;
  std::uint64_t ffn = 0;
};
[[nodiscard]] std::string layout_problem(const ModelShape& m, const Point& p, std::uint32_t gpus_per_node,
                                         bool tp_within_node);

/// Every layout for `gpus` GPUs that passes layout_problem, in ascending (tp, pp, vpp, cp, ep, mbs) order, plus the
/// rejected candidates (with reasons) in `rejected` when it is not null. Candidates: tp divides gpus and is
/// <= gpus_per_node; pp, cp, ep divide gpus; vpp in {1} or a divisor > 1 of layers / pp.
[[nodiscard]] std::vector<Layout> auto_layouts(const ModelShape& m, std::uint32_t gpus, std::uint32_t gpus_per_node,
                                               std::uint32_t gbs, std::uint32_t seq,
                                               const std::vector<std::uint32_t>& mbs_list,
                                               std::vector<std::pair<Layout, std::string>>* rejected = nullptr);

/// How to fix a sweep whose every point is invalid, as lines: for each layout list (--tp, --pp, --vpp, --cp, --ep,
/// or the sweep file's parallel/<size>) none of whose values is in a valid layout of some (model, cluster, GPU count,
/// gbs, seq) group, the flag, its values and the sizes the valid layouts of that group use (auto_layouts: TP inside a
/// node); when each list has a usable value but no combination is valid, one valid layout per group. Empty for an
/// auto-layout spec, or when no group has a valid layout (the reasons say why: cluster size, batch, sequence).
[[nodiscard]] std::vector<std::string> invalid_layout_fixes(const Spec& spec);

/// The inputs of a point as a JSON object (no index, no reason).
[[nodiscard]] nlohmann::json point_inputs(const Point& p);
/// Inverse of point_inputs (index 0, no reason). Throws ParseError naming `source` for a malformed object.
[[nodiscard]] Point point_from_inputs(const nlohmann::json& j, const std::string& source);
/// The `twinstep predict` command line that evaluates `p` alone, with the same config (the same recipe defaults,
/// models/recipe.hpp) and fidelity: "twinstep predict --model ... --overlap none".
[[nodiscard]] std::string predict_command(const Point& p);
/// Canonical JSON of point_inputs (sorted keys, no spaces): equal inputs give equal keys.
[[nodiscard]] std::string point_key(const Point& p);

/// A deterministic partition: shard `index` of `count` holds the points whose index % count == index.
struct Shard {
  std::uint32_t index = 0, count = 1;
};
/// Parses "I/N" (0 <= I < N). Throws Error naming the flag.
[[nodiscard]] Shard parse_shard(const std::string& text);
/// The shard implied by an MPI launcher's environment (OMPI_COMM_WORLD_RANK/SIZE, then PMI_RANK/PMI_SIZE), or
/// {0, 1} when neither is set.
[[nodiscard]] Shard shard_from_env();
[[nodiscard]] std::vector<Point> select_shard(const std::vector<Point>& points, const Shard& shard);

/// Splits "a,b,c"; throws Error naming `flag` on an empty item or a duplicate.
[[nodiscard]] std::vector<std::string> split_list(const std::string& text, const std::string& flag);
/// Splits "16,32,64" into positive integers; throws Error naming `flag`.
[[nodiscard]] std::vector<std::uint32_t> split_uints(const std::string& text, const std::string& flag);
/// Splits "analytic,flow" into modes, each read by `parse` (a mode's one parser, e.g. sim::parse_fidelity) with
/// `flag` as the field its errors name.
template <typename E>
[[nodiscard]] std::vector<E> split_modes(const std::string& text, const std::string& flag,
                                         E (*parse)(std::string_view, std::string_view)) {
  std::vector<E> out;
  for (const auto& item : split_list(text, flag)) out.push_back(parse(item, flag));
  return out;
}

}  // namespace twinstep::sweep
