// choose_profile(): the one rule by which predict, simulate and sweep pick their calibration profile
// (sim/profile_choice.hpp), and the table of measured defaults it reads (calibration/profiles/defaults.json).
#include "sim/profile_choice.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"

#ifndef TWINSTEP_PROFILES_DIR
#error "TWINSTEP_PROFILES_DIR must name the source tree's calibration/profiles folder (set by sim/CMakeLists.txt)"
#endif

namespace twinstep::sim {
namespace {

constexpr const char* kDefaultsFile = "defaults.json";

/// How outputs name a shipped profile: its path in the source tree, the same on every checkout.
std::string shipped_name(const std::string& file) { return "calibration/profiles/" + file; }

Profile read_shipped(const std::string& file) {
  return profile_from_json(read_file(profiles_dir() + "/" + file), shipped_name(file));
}

/// The profile file defaults.json lists for `gpu_name`'s model, or "" when none.
std::string default_file_for(const std::string& gpu_name) {
  const std::string source = shipped_name(kDefaultsFile);
  const nlohmann::json j = parse_json(read_file(profiles_dir() + "/" + kDefaultsFile), source);
  const JsonReader r(source);
  r.keys(j, "", {"schema_version", "note", "defaults"});
  if (!j.contains("defaults") || !j["defaults"].is_array()) r.fail("/defaults", "expected an array of {gpu, profile}");
  for (std::size_t i = 0; i < j["defaults"].size(); ++i) {
    const std::string at = "/defaults/" + std::to_string(i);
    const nlohmann::json& e = j["defaults"][i];
    r.keys(e, at, {"gpu", "profile"});
    if (!e.contains("gpu") || !e.contains("profile")) r.fail(at, "expected {\"gpu\": MODEL, \"profile\": FILE}");
    if (gpu_model(r.text(e["gpu"], at + "/gpu")) == gpu_model(gpu_name)) return r.text(e["profile"], at + "/profile");
  }
  return "";
}

bool is_id(const std::string& flag) {
  return flag.find('/') == std::string::npos && !(flag.size() > 5 && flag.ends_with(".json"));
}

/// A profile named by id (shipped, displayed by its source-tree path) or by path.
Profile load_named(const std::string& name) {
  const std::string path = profile_path(name);
  return is_id(name) && path.starts_with(profiles_dir() + "/") ? read_shipped(name + ".json") : read_profile(path);
}

}  // namespace

std::string profiles_dir() { return TWINSTEP_PROFILES_DIR; }

std::string profile_path(const std::string& flag) {
  if (flag == kDatasheetProfileFlag) return "";
  if (!is_id(flag)) return flag;
  std::error_code ec;
  if (std::filesystem::is_regular_file(profiles_dir() + "/" + flag + ".json", ec)) {
    return profiles_dir() + "/" + flag + ".json";
  }
  if (std::filesystem::is_regular_file(flag, ec)) return flag;  // a file in the working folder
  std::string ids;
  for (const auto& entry : std::filesystem::directory_iterator(profiles_dir(), ec)) {
    const auto& p = entry.path();
    if (p.extension() == ".json" && p.filename() != kDefaultsFile && !p.stem().string().ends_with(".framework")) {
      ids += (ids.empty() ? "" : ", ") + p.stem().string();
    }
  }
  throw Error("--profile \"" + flag + "\" is neither a profile file nor a shipped profile id; shipped ids: " + ids +
              ", or \"datasheet\" for the datasheet defaults");
}

ProfileChoice choose_profile(const std::string& flag, const topologies::Cluster& cluster) {
  ProfileChoice c;
  c.profile = Profile::datasheet_defaults();  // what the datasheet branches keep (a default Profile has no tables)
  if (flag == kDatasheetProfileFlag) {
    c.reason = "--profile datasheet";
  } else if (!flag.empty()) {
    c.profile = load_named(flag);
    c.reason = "--profile";
    c.measured = true;
  } else if (!cluster.profile.empty()) {
    const std::filesystem::path p(cluster.profile);
    c.profile = is_id(cluster.profile) || p.is_absolute()
                    ? load_named(cluster.profile)
                    : read_profile((std::filesystem::path(cluster.source_dir) / p).lexically_normal().string());
    c.reason = "the cluster file's \"profile\"";
    c.measured = true;
  } else if (const std::string file = default_file_for(cluster.node.gpu.name); !file.empty()) {
    c.profile = read_shipped(file);
    c.reason = "measured default for " + gpu_model(cluster.node.gpu.name) + " (" + shipped_name(kDefaultsFile) + ")";
    c.measured = true;
  } else {
    c.reason = "no measured profile for " + cluster.node.gpu.name + " in " + shipped_name(kDefaultsFile);
    c.warnings.push_back(c.reason + ": datasheet defaults used (calibrate one with twinstep calibrate, or pass " +
                         "--profile datasheet to choose them)");
  }
  if (c.measured) {
    for (auto& w : profile_warnings(c.profile, cluster)) c.warnings.push_back(std::move(w));
  }
  return c;
}

}  // namespace twinstep::sim
