// Which calibration profile a prediction uses: the one the user names (--profile PATH, or an id of
// calibration/profiles/), the cluster file's own "profile", else the measured profile that
// calibration/profiles/defaults.json lists for the cluster's GPU model; the datasheet defaults only when asked for
// (--profile datasheet) or when no measured profile of that GPU exists (with a warning). predict, simulate and sweep
// all choose through choose_profile().
#pragma once

#include <string>
#include <vector>

#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim {

/// The --profile value that selects Profile::datasheet_defaults().
inline constexpr const char* kDatasheetProfileFlag = "datasheet";

struct ProfileChoice {
  Profile profile;
  /// Why this profile: "--profile", "the cluster file's profile", "measured default for H100 (calibration/profiles/
  /// defaults.json)", "--profile datasheet", "no measured profile for A100 (calibration/profiles/defaults.json)".
  std::string reason;
  bool measured = false;              ///< false: the datasheet defaults.
  std::vector<std::string> warnings;  ///< profile_warnings(), plus the fallback to the datasheet when it happened.
};

/// The source tree's calibration/profiles folder (compiled in).
[[nodiscard]] std::string profiles_dir();

/// The profile file `flag` names: "" for the datasheet ("datasheet"), `profiles_dir()/ID.json` for an id of a shipped
/// profile ("h100x1"), else the path itself. Throws Error when an id names no shipped profile (listing them).
[[nodiscard]] std::string profile_path(const std::string& flag);

/// The profile for `cluster` given the --profile value `flag` ("" = not given), as the header comment says.
/// Throws ParseError for a malformed profile or defaults file (naming file and field).
[[nodiscard]] ProfileChoice choose_profile(const std::string& flag, const topologies::Cluster& cluster);

}  // namespace twinstep::sim
