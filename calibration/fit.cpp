// Fitting the profile from the microbenchmark suite's raw measurements: efficiency tables from compute sweeps, HBM
// efficiency over bytes for memory-bound kernels, a kernel floor, issue and host-sync costs; the collective lines
// (fit_collectives.cpp), the interference coefficients (fit_interference.cpp) and the framework group
// (fit_framework.cpp) beside them. Every figure is checked by simulating the microbenchmark schedules with the fitted
// profile; residuals go into the profile. Also: the memory overhead file, and borrowing a donor's comm figures.
#include "calibration/fit.hpp"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "calibration/fit_internal.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "common/stats.hpp"

namespace twinstep::calibration {
namespace {

using Json = nlohmann::json;
using fit_internal::compute_efficiency;
using fit_internal::Ctx;
using fit_internal::memory_efficiency;
using fit_internal::merged_table;

/// The (size, seconds) points of one measured family (probes that timed out or failed, value <= 0, left out).
std::vector<std::pair<double, double>> measured_family(const RawResults& raw, const std::string& fam) {
  std::vector<std::pair<double, double>> v;
  for (const auto& m : raw.measurements) {
    if (m.family == fam && m.value_s > 0) v.emplace_back(m.size, m.value_s);
  }
  return v;
}

/// Issue and host-sync costs: the median of each launch class's probes.
void fit_launch_costs(const Ctx& c, sim::Profile& p) {
  // Issue and host-sync costs.
  std::map<std::string, std::vector<double>> host;
  for (const auto& m : c.raw.measurements) {
    if (m.family.rfind("launch.", 0) == 0 || m.family == "host_sync") host[m.family].push_back(m.value_s);
  }
  if (host.count("launch.compute")) p.launch_s["compute"] = median(host["launch.compute"]);
  if (host.count("launch.memcpy")) p.launch_s["memcpy"] = median(host["launch.memcpy"]);
  if (host.count("launch.collective")) {
    const double v = median(host["launch.collective"]);
    p.launch_s["collective"] = p.launch_s["send"] = p.launch_s["recv"] = v;
  }
  if (host.count("host_sync")) p.launch_s["host_sync"] = std::max(0.0, median(host["host_sync"]));
  // A class not measured (one GPU: no collective, send or recv) keeps its datasheet figure, which the profile does not
  // write (missing_fields), so that a profile of several GPUs can supply it (borrow_comm_fields).
  for (const auto& entry : p.launch_s) {
    const bool measured = entry.first == "host_sync"                       ? host.count("host_sync") != 0
                          : entry.first == "send" || entry.first == "recv" ? host.count("launch.collective") != 0
                                                                           : host.count("launch." + entry.first) != 0;
    if (!measured) p.missing_fields.push_back("launch." + entry.first);
  }
}

/// The compute tables: tensor-core classes (efficiency over FLOPs), grouped GEMMs (over FLOPs per group),
/// memory-bound classes (HBM efficiency over bytes), the memory efficiency and the kernel floor.
void fit_compute_tables(Ctx& c, sim::Profile& p) {
  const auto& gpu = c.cluster.node.gpu;
  std::map<std::string, sim::EfficiencyTable> tables;  // the measured compute tables

  // Tensor-core classes: efficiency = FLOPs / (peak x time), over FLOPs.
  const double peak_bf16 = gpu.peak_flop_per_s(schedule::DType::kBF16);
  // gemm_accumulate: GEMMs adding into an fp32 C (accumulate_fp32), the fp32 epilogue in their time;
  // gemm_accumulate_bf16: the same shapes adding into a bf16 C (accumulate). Each is absent from raw files measured
  // before its probes existed (the simulator then adds the epilogue's bytes to the gemm table; the profile's context
  // says so: fit_profile). attention_noncausal_*: non-causal attention (the CP chunks), absent from raw files measured
  // before the suite's compute.attention_noncausal group (the simulator then reads the causal tables for them).
  for (const char* fam : {"gemm", "gemm_accumulate", "gemm_accumulate_bf16", "attention_fwd", "attention_bwd",
                          "attention_noncausal_fwd", "attention_noncausal_bwd"}) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& [flops, t] : measured_family(c.raw, fam))
      pts.emplace_back(flops, compute_efficiency(flops, t, peak_bf16));
    if (!pts.empty()) tables[fam] = merged_table(pts);
  }
  // Grouped GEMMs (MoE experts) have their own table when the raw file measured them (the default suite's expert
  // sweep), over FLOPs per group (sim::Profile::grouped_gemm_per_group: the backend issues one GEMM per group, as
  // Transformer Engine does, the groups' GEMMs running over TE's 4 side streams forked from and joined to the op's
  // stream (backend/grouped_gemm.hpp), so a grouped GEMM's time follows its group's shape and its group count);
  // otherwise the dense GEMM table stands in (over total FLOPs, as before), which overstates the efficiency of many
  // small expert GEMMs.
  {
    std::map<std::string, double> groups_of;  // probe -> non-empty groups (the suite's balanced expert rows)
    for (const auto& g : c.suite) {
      for (const auto& pr : g.probes) {
        if (pr.family == "grouped_gemm" && pr.params.count("groups")) groups_of[pr.name] = pr.params.at("groups");
      }
    }
    std::vector<std::pair<double, double>> pts;
    for (const auto& m : c.raw.measurements) {
      if (m.family != "grouped_gemm" || m.value_s <= 0) continue;
      const auto it = groups_of.find(m.probe);
      if (it == groups_of.end() || it->second < 1) {
        c.log.push_back("grouped_gemm: probe " + m.probe + " is not in this suite (group count unknown): skipped");
        continue;
      }
      pts.emplace_back(m.size / it->second, compute_efficiency(m.size, m.value_s, peak_bf16));
    }
    if (!pts.empty()) {
      tables["grouped_gemm"] = merged_table(pts);
      p.grouped_gemm_per_group = true;
      c.log.push_back("grouped_gemm: own table from " + std::to_string(pts.size()) + " measured grouped GEMMs (" +
                      std::to_string(tables["grouped_gemm"].points.size()) + " table points over FLOPs per group)");
    }
  }
  if (!tables.count("grouped_gemm") && tables.count("gemm")) {
    tables["grouped_gemm"] = tables["gemm"];
    c.log.push_back("grouped_gemm: no grouped-GEMM measurements in the raw file; the gemm table is used");
  }
  // Memory-bound classes: HBM efficiency over bytes moved.
  for (const char* fam : {"elementwise", "optimizer"}) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& [bytes, t] : measured_family(c.raw, fam)) {
      pts.emplace_back(bytes, memory_efficiency(bytes, t, gpu.hbm_bytes_per_s));
    }
    if (!pts.empty()) tables[fam] = merged_table(pts);
  }
  {
    auto ew = measured_family(c.raw, "elementwise");
    std::sort(ew.begin(), ew.end());
    if (!ew.empty()) {
      p.memory_efficiency =
          std::clamp(memory_efficiency(ew.back().first, ew.back().second, gpu.hbm_bytes_per_s), 0.05, 1.0);
      std::vector<double> small;
      for (const auto& [bytes, t] : ew) {
        if (bytes <= 64 * 1024) small.push_back(t);
      }
      p.kernel_floor_s = median(small);
    }
  }
  // The compute tables apply from here on, so the co-run and check simulations see them. A class not measured keeps
  // its datasheet table, which the profile does not write (missing_fields). The memory-bound tables are over bytes.
  // The suite runs on twinstep's backend, whose causal attention computes only the lower triangle of the scores
  // (backend/attention.cpp, since 2b51272): a causal kernel does half the work of a non-causal one of the same shape
  // (attention_full_scores false: "attention_causal_work": "half"; a backend computing the whole score matrix for
  // causal kernels would set it).
  for (const auto& [fam, table] : tables) p.compute[fam] = table;
  for (const auto& entry : p.compute) {
    if (!tables.count(entry.first)) p.missing_fields.push_back("compute." + entry.first);
  }
  p.memory_tables_by_bytes = true;
  p.attention_full_scores = false;
}

void check_groups(Ctx& c, const std::string& prefix, const sim::Profile& profile, const std::string& note) {
  std::map<std::string, std::vector<std::pair<double, double>>> by_family;
  for (const auto& g : c.suite) {
    if (g.name.rfind(prefix, 0) != 0) continue;
    if (std::none_of(g.probes.begin(), g.probes.end(), [&](const Probe& p) { return c.measured.count(p.name); })) {
      continue;
    }
    const auto sim = fit_internal::simulate_group(c, g, profile);
    for (const auto& p : g.probes) {
      const auto it = c.measured.find(p.name);
      if (it == c.measured.end()) continue;
      const std::string key = g.name.rfind("coll.", 0) == 0 || g.name.rfind("p2p.", 0) == 0 ? g.name : p.family;
      by_family[key].emplace_back(sim.at(p.name), it->second);
    }
  }
  for (const auto& [fam, pm] : by_family) fit_internal::summarize(c.fits, c.log, fam, pm, note);
}

}  // namespace

sim::MemoryOverhead read_memory_overhead(const std::string& path) {
  const Json j = parse_json(read_file(path), path);
  if (!j.is_object() || !j.contains("memory_overhead") || !j["memory_overhead"].is_object()) {
    throw ParseError(path, "/memory_overhead",
                     "expected the JSON of calibration/scripts/torch_memory_overhead.py (an object "
                     "\"memory_overhead\"); rerun the script with -o FILE");
  }
  const Json& m = j["memory_overhead"];
  // A non-negative number, or null / absent (not measured: -1).
  auto bytes = [&](const char* key, bool required) {
    const std::string ptr = std::string("/memory_overhead/") + key;
    if (!m.contains(key) || m[key].is_null()) {
      if (required) throw ParseError(path, ptr, "missing: the script always measures it; rerun it");
      return -1.0;
    }
    if (!m[key].is_number() || m[key].get<double>() < 0) {
      throw ParseError(path, ptr, "expected a number >= 0 (bytes) or null (not measured)");
    }
    return m[key].get<double>();
  };
  sim::MemoryOverhead o;
  o.cuda_context_bytes = bytes("cuda_context_bytes", true) + std::max(0.0, bytes("cuda_libraries_bytes", false));
  o.cublas_workspace_bytes = bytes("cublas_workspace_bytes", false);
  o.nccl_buffer_bytes_per_channel = bytes("nccl_buffer_bytes_per_channel", false);
  o.allocator_reserved_over_allocated = bytes("allocator_reserved_over_allocated", false);
  if (o.allocator_reserved_over_allocated >= 0 && o.allocator_reserved_over_allocated < 1) {
    throw ParseError(path, "/memory_overhead/allocator_reserved_over_allocated",
                     "must be >= 1 (the allocator reserves at least what it hands out)");
  }
  o.source = m.contains("source") && m["source"].is_string() ? m["source"].get<std::string>()
                                                             : "calibration/scripts/torch_memory_overhead.py";
  return o;
}

FitResult fit_profile(const RawResults& raw, const topologies::Cluster& cluster, const std::string& name,
                      const std::string& git_revision, const FrameworkInput& framework) {
  Ctx c{raw, cluster, make_suite(raw.suite, raw.world_size), {}, {}, {}};
  for (const auto& m : raw.measurements) {
    if (m.value_s > 0) c.measured[m.probe] = m.value_s;
  }
  sim::Profile p = sim::Profile::datasheet_defaults();
  // Launch costs first: a class not measured goes into missing_fields before the compute tables' classes.
  fit_launch_costs(c, p);
  fit_compute_tables(c, p);
  fit_internal::fit_collectives(c, p);
  fit_internal::fit_interference(c, p);
  if (framework.per_kernel_launch_s >= 0 || !framework.module_fwd.empty()) {
    FrameworkFit fw = fit_framework(framework, p.launch_s);
    p.framework = fw.costs;
    for (auto& f : fw.fits) c.fits.push_back(std::move(f));
    for (auto& l : fw.log) c.log.push_back(std::move(l));
  }

  // Residuals of everything, through the simulator with the final profile.
  check_groups(c, "compute.", p, "solo kernels, simulated vs measured");
  check_groups(c, "coll.", p,
               "NCCL's protocol choice; in-sample: the bus_efficiency tables pass through these points, judge on "
               "another run (calibration/scripts/coll_oos.py)");
  check_groups(c, "p2p.", p, "in-sample, as coll.*");
  fit_internal::log_per_size(c, p);
  check_groups(c, "host.", p, "issue per op / host_sync wake-up");
  check_groups(c, "corun.", p,
               "comm_hbm_bytes_per_bus_byte = " + std::to_string(p.interference.comm_hbm_bytes_per_bus_byte) +
                   ", waiting_sms_per_channel = " + std::to_string(p.interference.waiting_sms_per_channel) +
                   ", waiting_sms_per_channel_more = " + std::to_string(p.interference.waiting_sms_per_channel_more));
  p.fits = c.fits;

  std::map<std::string, std::string> context = raw.context;
  context["suite"] = raw.suite;
  context["world_size"] = std::to_string(raw.world_size);
  context["cluster"] = cluster.describe();
  if (!git_revision.empty()) context["fit_git_revision"] = git_revision;
  for (const char* fam : {"gemm_accumulate", "gemm_accumulate_bf16"}) {
    if (p.compute.count(fam) == 0) {
      context[std::string("compute.") + fam] =
          "not measured (the raw file has no such probes): accumulating GEMMs of this C dtype are priced from the "
          "gemm table plus the epilogue's C read and write";
    }
  }
  if (p.launch_s.count(sim::kGroupedGemmGroupLaunch) == 0) {
    context["launch.grouped_gemm_group"] =
        "not measured (no probe of a grouped GEMM's host issue time): each group of a grouped GEMM after its first "
        "is issued at launch.compute (one cuBLAS call), and its fork/join event calls cost 0 (launch.event)";
  }
  p.name = p.declared_name = name;
  p.context = std::move(context);
  FitResult r;
  r.json = sim::profile_to_json(p);
  r.profile = std::move(p);
  r.log = std::move(c.log);
  return r;
}

std::vector<std::string> borrow_comm_fields(FitResult& r, const sim::Profile& donor) {
  sim::Profile& p = r.profile;
  std::vector<std::string> taken;
  if (p.collectives.empty() && !donor.collectives.empty()) {
    p.collectives = donor.collectives;
    p.nccl = donor.nccl;
    taken.emplace_back("collectives");
    taken.emplace_back("nccl");
  }
  for (const char* cls : {"collective", "send", "recv"}) {
    const std::string field = std::string("launch.") + cls;
    const auto missing = [&field](const sim::Profile& q) {
      return std::find(q.missing_fields.begin(), q.missing_fields.end(), field) != q.missing_fields.end();
    };
    if (missing(p) && !missing(donor) && donor.launch_s.count(cls) != 0) {
      p.launch_s[cls] = donor.launch_s.at(cls);
      p.missing_fields.erase(std::find(p.missing_fields.begin(), p.missing_fields.end(), field));
      taken.push_back(field);
    }
  }
  const bool own_coruns = std::any_of(p.fits.begin(), p.fits.end(), [](const sim::FitSummary& f) {
    return f.name.starts_with("corun.") || f.name.starts_with("recv_wait");
  });
  if (!own_coruns) {
    p.interference.comm_hbm_bytes_per_bus_byte = donor.interference.comm_hbm_bytes_per_bus_byte;
    p.interference.waiting_sms_per_channel = donor.interference.waiting_sms_per_channel;
    p.interference.waiting_sms_per_channel_more = donor.interference.waiting_sms_per_channel_more;
    // The waiting coefficients were fitted under the donor's GEMM output tile (fit_interference.cpp,
    // choose_gemm_tile): they only mean the same with that tile.
    p.interference.gemm_tile_m = donor.interference.gemm_tile_m;
    p.interference.gemm_tile_n = donor.interference.gemm_tile_n;
    taken.emplace_back("interference.comm_hbm_bytes_per_bus_byte");
    taken.emplace_back("interference.waiting_sms_per_channel");
    taken.emplace_back("interference.waiting_sms_per_channel_more");
    taken.emplace_back("interference.gemm_tile");
  }
  if (taken.empty()) return taken;
  for (const auto& f : donor.fits) {
    const bool comm = f.name.starts_with("coll.") || f.name.starts_with("p2p.") || f.name == "launch.collective" ||
                      (!own_coruns && (f.name.starts_with("corun.") || f.name.starts_with("recv_wait")));
    if (!comm) continue;
    sim::FitSummary b = f;
    b.note = "borrowed from " + donor.declared_name + ": " + f.note;
    p.fits.push_back(std::move(b));
  }
  std::string list;
  for (const auto& t : taken) list += (list.empty() ? "" : ", ") + t;
  const auto gpu = donor.context.find("gpu");
  p.context["borrowed_from"] = donor.declared_name.empty() ? donor.name : donor.declared_name;
  if (gpu != donor.context.end()) p.context["borrowed_from"] += " (measured on " + gpu->second + ")";
  p.context["borrowed_fields"] = list;
  p.context["datasheet_fields"] =
      "inter-node figures (InfiniBand NIC bandwidth and latency, collectives spanning nodes): the cluster's "
      "datasheet figures and NCCL's model; no lent machine spans two nodes";
  r.json = sim::profile_to_json(p);
  return taken;
}

}  // namespace twinstep::calibration
