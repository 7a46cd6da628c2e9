// Calibration profile JSON (schema_version 1). Every section is optional; what is absent keeps the datasheet
// default. The calibration issue writes these files from measurements. Format:
//   { "schema_version": 1, "name": "...", "context": {"gpu": "...", "nccl": "..."},
//     "compute": {"gemm": [[flops, efficiency], ...], "elementwise": [[bytes, efficiency], ...], ...},
//                 (optional, later: "gemm_accumulate", GEMMs with accumulate_fp32 measured, over FLOPs;
//                  "attention_noncausal_fwd" / "_bwd", non-causal attention measured, over its FLOPs, read for
//                  non-causal kernels instead of the causal class table)
//     "op_compute": {"fwd.rope": [[bytes, efficiency], ...], "bwd.fc1_wgrad": [[flops, efficiency], ...]},
//                    (optional, later addition: by op stem, sim::op_stem; over the size of the op's class table)
//     "memory_efficiency": 0.9,
//     "launch": {"compute": "4.24 us", "memcpy": ..., "collective": ..., "send": ..., "recv": ..., "host_sync": ...},
//               (optional, later: "grouped_gemm_group", one more group's GEMM call of a grouped GEMM, default
//                launch.compute; "event", one event record or stream wait, default 0: CostModel::host_tail_ns)
//     "collectives": [{"kind": "all_reduce", "algorithm": "ring", "protocol": "simple", "span": "intra",
//                      "base_latency": "8.4 us", "step_latency": "3.4 us", "bus_bandwidth": "370 GB/s"}],
//                     (optional, later: "ranks": N, the group size the entry was measured at; an entry for a
//                      collective's own group size wins over one without "ranks"; "bus_efficiency": [[bytes,
//                      fraction], ...], the measured fraction of bus_bandwidth over message bytes, interpolated as
//                      the compute tables are)
//     "nccl": {"algorithms": ["ring", "tree"], "protocols": ["ll", "ll128", "simple"], "channels_intra": 24,
//              "channels_inter": 16, "p2p_channels_nvlink": 32, "p2p_channels_net": 4, "p2p_peers_per_round": 8,
//              "net_overhead": "1 us"},
//     "interference": {"comm_hbm_bytes_per_bus_byte": 2.5, "gemm_tile_m": 128, "gemm_tile_n": 256,
//                      "attention_tile_q": 128 (0: attention time scales with its SMs, no waves),
//                      "waiting_sms_per_channel": 0,
//                      "waiting_sms_per_channel_more": 0},  (the last two: optional, later)
//     "kernel_floor": "2.2 us",              (optional, later addition: shortest kernel GPU time)
//     "memory_tables": "bytes",              (optional: elementwise/optimizer/memcpy tables over bytes moved)
//     "attention_causal_work": "full",       (optional: the implementation computes the masked scores too; "half"
//                                             is the default, FlashAttention's skipping of masked blocks)
//     "grouped_gemm_table": "per_group",     (optional: the grouped_gemm table is over FLOPs per non-empty group;
//                                             "total", the default, over a grouped GEMM's total FLOPs)
//     "framework": {"per_kernel_launch": "9 us", "per_module_call": "30 us", "event_record": "2 us",
//                   "per_autograd_node": ..., "per_kernel_backward": ..., "backward_call": ..., "host_sync": ...,
//                   "optimizer_step": ..., "optimizer_per_param": ..., "optimizer_per_group": ..., "moe_router": ...,
//                   "moe_preprocess": ...,
//                   "moe_permute": ..., "moe_unpermute": ..., "ep_node": ..., "source": "...",
//                   "moe_routing_calls": {"fwd.router_logits_topk": [[experts, seconds], ...], "bwd.router": ...}},
//                   (every figure optional: absent = not measured; sim::kFrameworkFields lists them;
//                   moe_routing_calls: the eager MoE routing's host time per call, calibration/fit_moe_routing.hpp)
//     "memory_overhead": {"cuda_context_bytes": 5.2e8, "cublas_workspace_bytes": 3.4e7,
//                         "nccl_buffer_bytes_per_channel": 4.2e6, "allocator_reserved_over_allocated": 1.03,
//                         "source": "..."},  (optional, later addition; each key optional: what the GPU measured)
//     "copy_engine": {"nvlink_efficiency": 0.8356, "source": "..."},  (optional, later addition: a copy-engine
//                         peer copy's fraction of the NVLink line rate; absent: sim::CopyEngine's default)
//     "clock_model": {"mode": "none", "power_limit_w": 700, "idle_w": 116, "max_mhz": 1980, "power_exponent": 1.9,
//                     "time_exponent": 0.74, "gemm_power_w": [[flops, W], ...], "attention_w": 429, "memory_w": 384,
//                     "comm_w": 0, "measured_mhz": {"gemm": 1500, ...}, "min_mhz": 300, "source": "..."},
//                    (optional, later addition: the SM clock under the power cap, sim/clock_model.hpp; W above idle at
//                     max_mhz; "mode" "power-cap" turns it on by default; min_mhz optional)
//     "fits": [{"name": "compute.gemm", "points": 40, "mean_abs_rel_error": 0.02, "max_abs_rel_error": 0.09,
//               "note": "..."}] }
// The later additions are optional, so every schema-1 file reads as before. profile_to_json() writes the same
// format (calibration/fit.cpp's output), and profile_warnings() says what a profile leaves to the datasheet.
#include <algorithm>
#include <array>
#include <cctype>
#include <initializer_list>
#include <nlohmann/json.hpp>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "sim/clock_model.hpp"
#include "sim/cost_model.hpp"

namespace twinstep::sim {
namespace {

using Json = nlohmann::json;

/// Values of the profile format on top of the shared field reader: NCCL algorithm and protocol names, efficiency
/// tables, and counts up to 2^20.
class Reader : public JsonReader {
 public:
  explicit Reader(const std::string& source) : JsonReader(source), file_(source) {}

  std::uint32_t count(const Json& v, const std::string& ptr, std::uint32_t min) const {
    return JsonReader::count(v, ptr, min, 1u << 20);
  }

  /// A mode's spelling at `ptr`, read by its parse_X; an unknown one names the file, the pointer and the spellings.
  template <typename E>
  E name(const Json& v, const std::string& ptr, E (*parse)(std::string_view, std::string_view),
         std::string_view hint = {}) const {
    const std::string t = text(v, ptr);
    return reading_names(
        file_, ptr, [&] { return parse(t, ptr); }, hint);
  }

  NcclAlgo algo(const Json& v, const std::string& ptr) const {
    return name(v, ptr, parse_nccl_algo, "; NVLS is not modelled (NCCL_NVLS_ENABLE=0)");
  }

  NcclProto proto(const Json& v, const std::string& ptr) const { return name(v, ptr, parse_nccl_proto); }

  EfficiencyTable table(const Json& v, const std::string& ptr) const {
    if (!v.is_array() || v.empty()) fail(ptr, "expected a non-empty array of [size, efficiency] pairs");
    EfficiencyTable t;
    double last = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const std::string p = ptr + "/" + std::to_string(i);
      const Json& pt = v[i];
      if (!pt.is_array() || pt.size() != 2 || !pt[0].is_number() || !pt[1].is_number()) {
        fail(p, "expected [size, efficiency], two numbers");
      }
      const double size = pt[0].get<double>(), eff = pt[1].get<double>();
      if (size <= last) fail(p, "sizes must be positive and strictly ascending");
      if (eff <= 0 || eff > 1) fail(p, "efficiency must be in (0, 1] (a fraction of peak)");
      last = size;
      t.points.emplace_back(size, eff);
    }
    return t;
  }

 private:
  std::string file_;  ///< The source the base reader names in its errors.
};

/// "collectives": measured parameters per (kind, algorithm, protocol, span, ranks).
void read_collectives(const Reader& r, const Json& arr, Profile& p) {
  if (!arr.is_array()) r.fail("/collectives", "expected an array");
  for (std::size_t i = 0; i < arr.size(); ++i) {
    const std::string ptr = "/collectives/" + std::to_string(i);
    const Json& e = arr[i];
    r.keys(e, ptr,
           {"kind", "algorithm", "protocol", "span", "ranks", "base_latency", "step_latency", "bus_bandwidth",
            "bus_efficiency"});
    CollectiveParams c;
    if (e.contains("kind")) c.kind = r.name(e["kind"], ptr + "/kind", parse_collective_params_kind);
    if (!e.contains("algorithm")) r.fail(ptr + "/algorithm", "missing required field \"algorithm\"");
    if (!e.contains("protocol")) r.fail(ptr + "/protocol", "missing required field \"protocol\"");
    c.algo = r.algo(e["algorithm"], ptr + "/algorithm");
    c.proto = r.proto(e["protocol"], ptr + "/protocol");
    if (!e.contains("span"))
      r.fail(ptr + "/span", "missing required field \"span\" (\"intra\": one node; \"inter\": across nodes)");
    c.span = r.name(e["span"], ptr + "/span", parse_span);
    if (e.contains("ranks")) c.ranks = r.count(e["ranks"], ptr + "/ranks", 2);
    if (e.contains("base_latency"))
      c.base_latency_s = r.quantity(e["base_latency"], ptr + "/base_latency", Dimension::kTime);
    if (e.contains("step_latency"))
      c.step_latency_s = r.quantity(e["step_latency"], ptr + "/step_latency", Dimension::kTime);
    // Each of the three is optional: absent, the cost model keeps its own figure (profile_to_json writes it only
    // where it is known).
    if (e.contains("bus_bandwidth")) {
      c.bus_bytes_per_s = r.quantity(e["bus_bandwidth"], ptr + "/bus_bandwidth", Dimension::kBandwidth);
      if (c.bus_bytes_per_s <= 0) {
        r.fail(ptr + "/bus_bandwidth",
               "must be positive (e.g. \"370 GB/s\"); leave the field out to keep the topology's link bandwidth");
      }
    }
    if (e.contains("bus_efficiency")) c.bus_efficiency = r.table(e["bus_efficiency"], ptr + "/bus_efficiency");
    p.collectives.push_back(c);
  }
}

/// "nccl": the algorithms and protocols NCCL may choose, channel and peer counts.
void read_nccl(const Reader& r, const Json& n, Profile& p) {
  r.keys(n, "/nccl",
         {"algorithms", "protocols", "channels_intra", "channels_inter", "p2p_channels_nvlink", "p2p_channels_net",
          "p2p_peers_per_round", "net_overhead"});
  if (n.contains("algorithms")) {
    if (!n["algorithms"].is_array() || n["algorithms"].empty())
      r.fail("/nccl/algorithms", "expected a non-empty array");
    p.nccl.algorithms.clear();
    for (std::size_t i = 0; i < n["algorithms"].size(); ++i) {
      p.nccl.algorithms.push_back(r.algo(n["algorithms"][i], "/nccl/algorithms/" + std::to_string(i)));
    }
  }
  if (n.contains("protocols")) {
    if (!n["protocols"].is_array() || n["protocols"].empty()) r.fail("/nccl/protocols", "expected a non-empty array");
    p.nccl.protocols.clear();
    for (std::size_t i = 0; i < n["protocols"].size(); ++i) {
      p.nccl.protocols.push_back(r.proto(n["protocols"][i], "/nccl/protocols/" + std::to_string(i)));
    }
  }
  if (n.contains("channels_intra")) p.nccl.channels_intra = r.count(n["channels_intra"], "/nccl/channels_intra", 1);
  if (n.contains("channels_inter")) p.nccl.channels_inter = r.count(n["channels_inter"], "/nccl/channels_inter", 1);
  if (n.contains("p2p_channels_nvlink")) {
    p.nccl.p2p_channels_nvlink = r.count(n["p2p_channels_nvlink"], "/nccl/p2p_channels_nvlink", 1);
  }
  if (n.contains("p2p_channels_net"))
    p.nccl.p2p_channels_net = r.count(n["p2p_channels_net"], "/nccl/p2p_channels_net", 1);
  if (n.contains("p2p_peers_per_round")) {
    p.nccl.p2p_peers_per_round = r.count(n["p2p_peers_per_round"], "/nccl/p2p_peers_per_round", 1);
  }
  if (n.contains("net_overhead"))
    p.nccl.net_overhead_s = r.quantity(n["net_overhead"], "/nccl/net_overhead", Dimension::kTime);
}

/// "interference": HBM traffic of communication kernels, tiles, SMs held by waiting kernels.
void read_interference(const Reader& r, const Json& f, Profile& p) {
  r.keys(f, "/interference",
         {"comm_hbm_bytes_per_bus_byte", "gemm_tile_m", "gemm_tile_n", "attention_tile_q", "waiting_sms_per_channel",
          "waiting_sms_per_channel_more"});
  if (f.contains("comm_hbm_bytes_per_bus_byte")) {
    p.interference.comm_hbm_bytes_per_bus_byte = r.quantity(
        f["comm_hbm_bytes_per_bus_byte"], "/interference/comm_hbm_bytes_per_bus_byte", Dimension::kDimensionless);
    if (p.interference.comm_hbm_bytes_per_bus_byte < 0) {
      r.fail("/interference/comm_hbm_bytes_per_bus_byte", "must not be negative");
    }
  }
  if (f.contains("gemm_tile_m")) p.interference.gemm_tile_m = r.count(f["gemm_tile_m"], "/interference/gemm_tile_m", 1);
  if (f.contains("gemm_tile_n")) p.interference.gemm_tile_n = r.count(f["gemm_tile_n"], "/interference/gemm_tile_n", 1);
  if (f.contains("waiting_sms_per_channel")) {
    p.interference.waiting_sms_per_channel =
        r.quantity(f["waiting_sms_per_channel"], "/interference/waiting_sms_per_channel", Dimension::kDimensionless);
    if (p.interference.waiting_sms_per_channel < 0 || p.interference.waiting_sms_per_channel > 1) {
      r.fail("/interference/waiting_sms_per_channel", "must be in [0, 1] (SMs held per NCCL channel while waiting)");
    }
  }
  if (f.contains("waiting_sms_per_channel_more")) {
    p.interference.waiting_sms_per_channel_more = r.quantity(
        f["waiting_sms_per_channel_more"], "/interference/waiting_sms_per_channel_more", Dimension::kDimensionless);
    if (p.interference.waiting_sms_per_channel_more < 0 || p.interference.waiting_sms_per_channel_more > 1) {
      r.fail("/interference/waiting_sms_per_channel_more",
             "must be in [0, 1] (SMs held per NCCL channel by each further waiting kernel on a GPU)");
    }
  }
  if (f.contains("attention_tile_q")) {
    p.interference.attention_tile_q = r.count(f["attention_tile_q"], "/interference/attention_tile_q", 0);
  }
}

/// "clock_model": the SM clock under the power cap (sim/clock_model.hpp); every figure but mode, min_mhz and source
/// required.
void read_clock_model(const Reader& r, const Json& c, Profile& p) {
  const std::string at = "/clock_model";
  r.keys(c, at,
         {"mode", "power_limit_w", "idle_w", "max_mhz", "min_mhz", "power_exponent", "time_exponent", "gemm_power_w",
          "attention_w", "memory_w", "comm_w", "measured_mhz", "source"});
  ClockModel& m = p.clock_model;
  const auto number = [&](const char* key, double min) {
    if (!c.contains(key)) r.fail(at, std::string("missing \"") + key + "\" (docs/calibration.md section 8)");
    const double v = r.quantity(c[key], at + "/" + key, Dimension::kDimensionless);
    if (!(v >= min)) r.fail(at + "/" + key, "must be at least " + std::to_string(min));
    return v;
  };
  if (c.contains("mode")) m.mode = r.name(c["mode"], at + "/mode", parse_clock_mode);
  m.power_limit_w = number("power_limit_w", 1);
  m.idle_w = number("idle_w", 0);
  m.max_mhz = number("max_mhz", 1);
  if (c.contains("min_mhz")) m.min_mhz = number("min_mhz", 1);
  if (m.min_mhz >= m.max_mhz) r.fail(at + "/min_mhz", "must be below max_mhz");
  if (m.idle_w >= m.power_limit_w) r.fail(at + "/idle_w", "must be below power_limit_w");
  m.power_exponent = number("power_exponent", 0);
  m.time_exponent = number("time_exponent", 0);
  m.attention_w = number("attention_w", 0);
  m.memory_w = number("memory_w", 0);
  m.comm_w = number("comm_w", 0);
  const Json& g = c.contains("gemm_power_w") ? c["gemm_power_w"] : Json();
  if (!g.is_array() || g.empty()) r.fail(at + "/gemm_power_w", "expected a non-empty array of [flops, W] pairs");
  for (std::size_t i = 0; i < g.size(); ++i) {
    const std::string pi = at + "/gemm_power_w/" + std::to_string(i);
    if (!g[i].is_array() || g[i].size() != 2 || !g[i][0].is_number() || !g[i][1].is_number()) {
      r.fail(pi, "expected [flops, W], two numbers");
    }
    const double flops = g[i][0].get<double>(), w = g[i][1].get<double>();
    if (flops <= (m.gemm_power_w.points.empty() ? 0 : m.gemm_power_w.points.back().first) || w < 0) {
      r.fail(pi, "FLOPs must be positive and strictly ascending, W not negative");
    }
    m.gemm_power_w.points.emplace_back(flops, w);
  }
  if (!c.contains("measured_mhz") || !c["measured_mhz"].is_object()) {
    r.fail(at + "/measured_mhz", "expected an object: compute table name -> MHz its suite group ran at");
  }
  for (const auto& [table, v] : c["measured_mhz"].items()) {
    const std::string pt = at + "/measured_mhz/" + table;
    if (std::find(kComputeTableNames.begin(), kComputeTableNames.end(), table) == kComputeTableNames.end()) {
      r.fail(pt, "not a compute table name (gemm, grouped_gemm, attention_fwd, ...)");
    }
    m.measured_mhz[table] = r.quantity(v, pt, Dimension::kDimensionless);
    if (m.measured_mhz[table] <= 0) r.fail(pt, "must be positive (MHz)");
  }
  if (c.contains("source")) m.source = r.text(c["source"], at + "/source");
}

/// "framework": host costs of the training framework (sim::kFrameworkFields lists the figures).
void read_framework(const Reader& r, const Json& f, Profile& p) {
  std::vector<std::string> keys{"source", "moe_routing_calls"};
  for (const auto& fld : kFrameworkFields) keys.emplace_back(fld.key);
  r.keys(f, "/framework", keys);
  if (f.contains("moe_routing_calls")) {  // [[experts, seconds], ...] by call: seconds are in (0, 1] like efficiencies
    if (!f["moe_routing_calls"].is_object()) r.fail("/framework/moe_routing_calls", "expected an object by call");
    for (const auto& item : f["moe_routing_calls"].items()) {
      p.framework.moe_routing_calls[item.key()] = r.table(item.value(), "/framework/moe_routing_calls/" + item.key());
    }
  }
  for (const auto& fld : kFrameworkFields) {
    if (!f.contains(fld.key)) continue;
    const std::string path = std::string("/framework/") + fld.key;
    double& v = p.framework.*fld.member;
    v = r.quantity(f[fld.key], path, Dimension::kTime);
    if (v < 0 || v > 1.0) r.fail(path, "must be in [0, 1 s] (host time of one framework call)");
  }
  if (f.contains("source")) {
    if (!f["source"].is_string()) r.fail("/framework/source", "expected a string");
    p.framework.source = f["source"].get<std::string>();
  }
}

/// "fits": summaries of the fits that produced the profile.
void read_fits(const Reader& r, const Json& arr, Profile& p) {
  if (!arr.is_array()) r.fail("/fits", "expected an array");
  for (std::size_t i = 0; i < arr.size(); ++i) {
    const std::string ptr = "/fits/" + std::to_string(i);
    r.keys(arr[i], ptr, {"name", "points", "mean_abs_rel_error", "max_abs_rel_error", "note"});
    FitSummary f;
    if (arr[i].contains("name") && arr[i]["name"].is_string()) f.name = arr[i]["name"].get<std::string>();
    if (arr[i].contains("points")) f.points = r.count(arr[i]["points"], ptr + "/points", 0);
    if (arr[i].contains("mean_abs_rel_error")) {
      f.mean_abs_rel_error =
          r.quantity(arr[i]["mean_abs_rel_error"], ptr + "/mean_abs_rel_error", Dimension::kDimensionless);
    }
    if (arr[i].contains("max_abs_rel_error")) {
      f.max_abs_rel_error =
          r.quantity(arr[i]["max_abs_rel_error"], ptr + "/max_abs_rel_error", Dimension::kDimensionless);
    }
    if (arr[i].contains("note") && arr[i]["note"].is_string()) f.note = arr[i]["note"].get<std::string>();
    p.fits.push_back(std::move(f));
  }
}

/// "name" and "context": what the profile calls itself and where its figures came from.
void read_identity(const Reader& r, const Json& j, const std::string& source, Profile& p) {
  if (j.contains("name")) {
    if (!j["name"].is_string()) r.fail("/name", "expected a string");
    p.declared_name = j["name"].get<std::string>();
    p.name = p.declared_name + " (" + source + ")";
  }
  if (j.contains("context")) {
    if (!j["context"].is_object()) r.fail("/context", "expected an object of strings");
    for (const auto& item : j["context"].items()) {
      if (!item.value().is_string()) r.fail("/context/" + item.key(), "expected a string");
      p.context[item.key()] = item.value().get<std::string>();
    }
  }
}

/// "compute", "op_compute" and "memory_efficiency": the efficiency tables by kernel class and by op stem.
void read_compute_tables(const Reader& r, const Json& j, Profile& p) {
  if (j.contains("compute")) {
    r.keys(j["compute"], "/compute",
           std::vector<std::string>(sim::kComputeTableNames.begin(), sim::kComputeTableNames.end()));
    for (const auto& item : j["compute"].items()) {
      p.compute[item.key()] = r.table(item.value(), "/compute/" + item.key());
    }
  }
  if (j.contains("op_compute")) {
    if (!j["op_compute"].is_object()) r.fail("/op_compute", "expected an object of tables by op stem");
    for (const auto& item : j["op_compute"].items()) {
      if (item.key().empty() || op_stem(item.key()) != item.key()) {
        r.fail("/op_compute/" + item.key(),
               "expected an op stem: the op's name without its layer and micro-batch (\"fwd.rope\", not "
               "\"L0.mb0.fwd.rope\")");
      }
      p.op_compute[item.key()] = r.table(item.value(), "/op_compute/" + item.key());
    }
  }
  if (j.contains("memory_efficiency")) {
    p.memory_efficiency = r.quantity(j["memory_efficiency"], "/memory_efficiency", Dimension::kDimensionless);
    if (p.memory_efficiency <= 0 || p.memory_efficiency > 1) {
      r.fail("/memory_efficiency", "must be in (0, 1] (fraction of HBM bandwidth)");
    }
  }
}

/// "launch": the launch cost per op kind.
void read_launch(const Reader& r, const Json& launch, Profile& p) {
  r.keys(launch, "/launch",
         {"compute", "memcpy", "collective", "send", "recv", "host_sync", kGroupedGemmGroupLaunch, kEventLaunch});
  for (const auto& item : launch.items()) {
    const double s = r.quantity(item.value(), "/launch/" + item.key(), Dimension::kTime);
    if (s < 0) r.fail("/launch/" + item.key(), "must not be negative");
    p.launch_s[item.key()] = s;
  }
}

/// The profile's two-way switches of how compute tables are read: each JSON key, the spelling that sets its field
/// and the one that clears it, and the fix an error names. read_table_conventions reads them, profile_to_json writes
/// them, both from this table.
struct TableSwitch {
  const char* key;
  const char* on;
  const char* off;
  const char* choices;
  bool Profile::*field;
};
const std::array<TableSwitch, 3> kTableSwitches{{
    {"memory_tables", "bytes", "flops", "use \"bytes\" or \"flops\"", &Profile::memory_tables_by_bytes},
    {"attention_causal_work", "full", "half",
     "use \"half\" (causal kernels skip masked blocks) or \"full\" (the whole score matrix is computed)",
     &Profile::attention_full_scores},
    {"grouped_gemm_table", "per_group", "total",
     "use \"per_group\" (the table is over FLOPs per non-empty group) or \"total\" (over total FLOPs)",
     &Profile::grouped_gemm_per_group},
}};

/// "kernel_floor" and the switches of kTableSwitches: how the compute tables are read.
void read_table_conventions(const Reader& r, const Json& j, Profile& p) {
  if (j.contains("kernel_floor")) {
    p.kernel_floor_s = r.quantity(j["kernel_floor"], "/kernel_floor", Dimension::kTime);
    if (p.kernel_floor_s < 0 || p.kernel_floor_s > 1e-3) r.fail("/kernel_floor", "must be in [0, 1 ms]");
  }
  for (const TableSwitch& sw : kTableSwitches) {
    if (!j.contains(sw.key)) continue;
    const Json& v = j[sw.key];
    const std::string m = v.is_string() ? v.get<std::string>() : "";
    if (m != sw.on && m != sw.off) r.fail(std::string("/") + sw.key, sw.choices);
    p.*sw.field = m == sw.on;
  }
}

/// "memory_overhead": the bytes per GPU beside the model's (CUDA context, cuBLAS, NCCL, the allocator's reserve).
void read_memory_overhead(const Reader& r, const Json& m, Profile& p) {
  r.keys(m, "/memory_overhead",
         {"cuda_context_bytes", "cublas_workspace_bytes", "nccl_buffer_bytes_per_channel",
          "allocator_reserved_over_allocated", "source"});
  auto bytes = [&](const char* key, double& target) {
    if (!m.contains(key)) return;
    const std::string ptr = std::string("/memory_overhead/") + key;
    target = r.quantity(m[key], ptr, Dimension::kBytes);
    if (target < 0 || target > 64.0 * 1024 * 1024 * 1024) r.fail(ptr, "must be in [0, 64 GiB] (bytes per GPU)");
  };
  bytes("cuda_context_bytes", p.memory_overhead.cuda_context_bytes);
  bytes("cublas_workspace_bytes", p.memory_overhead.cublas_workspace_bytes);
  bytes("nccl_buffer_bytes_per_channel", p.memory_overhead.nccl_buffer_bytes_per_channel);
  if (m.contains("allocator_reserved_over_allocated")) {
    const char* ptr = "/memory_overhead/allocator_reserved_over_allocated";
    p.memory_overhead.allocator_reserved_over_allocated =
        r.quantity(m["allocator_reserved_over_allocated"], ptr, Dimension::kDimensionless);
    const double v = p.memory_overhead.allocator_reserved_over_allocated;
    if (v < 1 || v > 4) r.fail(ptr, "must be in [1, 4] (reserved over allocated bytes at the peak)");
  }
  if (m.contains("source")) {
    if (!m["source"].is_string()) r.fail("/memory_overhead/source", "expected a string");
    p.memory_overhead.source = m["source"].get<std::string>();
  }
}

/// "copy_engine": a copy-engine peer copy's efficiency on NVLink.
void read_copy_engine(const Reader& r, const Json& ce, Profile& p) {
  r.keys(ce, "/copy_engine", {"nvlink_efficiency", "source"});
  if (ce.contains("nvlink_efficiency")) {
    const double v = r.quantity(ce["nvlink_efficiency"], "/copy_engine/nvlink_efficiency", Dimension::kDimensionless);
    if (v <= 0 || v > 1) {
      r.fail("/copy_engine/nvlink_efficiency",
             "must be in (0, 1] (a copy-engine peer copy's fraction of the NVLink line rate)");
    }
    p.copy_engine.nvlink_efficiency = v;
  }
  if (ce.contains("source")) {
    if (!ce["source"].is_string()) r.fail("/copy_engine/source", "expected a string");
    p.copy_engine.source = ce["source"].get<std::string>();
  }
}

/// What the file leaves to the datasheet: every field datasheet_defaults() sets that the file does not.
std::vector<std::string> datasheet_fields(const Json& j) {
  std::vector<std::string> missing;
  const Profile datasheet = Profile::datasheet_defaults();
  for (const auto& entry : datasheet.compute) {
    if (!j.contains("compute") || !j["compute"].contains(entry.first)) missing.push_back("compute." + entry.first);
  }
  if (!j.contains("memory_efficiency")) missing.push_back("memory_efficiency");
  for (const auto& entry : datasheet.launch_s) {
    if (!j.contains("launch") || !j["launch"].contains(entry.first)) missing.push_back("launch." + entry.first);
  }
  return missing;
}

}  // namespace

Profile profile_from_json(const std::string& text, const std::string& source) {
  const Json j = parse_json(text, source);
  const Reader r(source);
  r.keys(j, "",
         {"schema_version", "name", "context", "compute", "op_compute", "memory_efficiency", "launch", "collectives",
          "nccl", "interference", "kernel_floor", "memory_tables", "attention_causal_work", "grouped_gemm_table",
          "framework", "memory_overhead", "copy_engine", "clock_model", "fits"});
  if (!j.contains("schema_version") || !j["schema_version"].is_number_integer() ||
      j["schema_version"].get<int>() != Profile::kSchemaVersion) {
    r.fail("/schema_version", "expected \"schema_version\": 1");
  }
  Profile p = Profile::datasheet_defaults();
  p.name = source;
  // In the order of the file's sections, so that the first wrong field is the one reported.
  read_identity(r, j, source, p);
  read_compute_tables(r, j, p);
  if (j.contains("launch")) read_launch(r, j["launch"], p);
  if (j.contains("collectives")) read_collectives(r, j["collectives"], p);
  if (j.contains("nccl")) read_nccl(r, j["nccl"], p);
  if (j.contains("interference")) read_interference(r, j["interference"], p);
  read_table_conventions(r, j, p);
  if (j.contains("framework")) read_framework(r, j["framework"], p);
  if (j.contains("memory_overhead")) read_memory_overhead(r, j["memory_overhead"], p);
  if (j.contains("copy_engine")) read_copy_engine(r, j["copy_engine"], p);
  if (j.contains("clock_model")) read_clock_model(r, j["clock_model"], p);
  if (j.contains("fits")) read_fits(r, j["fits"], p);
  p.missing_fields = datasheet_fields(j);
  return p;
}

namespace {

Json table_json(const EfficiencyTable& t) {
  Json out = Json::array();
  for (const auto& [size, eff] : t.points) out.push_back(Json::array({size, eff}));
  return out;
}

bool is_missing(const Profile& p, const std::string& field) {
  return std::find(p.missing_fields.begin(), p.missing_fields.end(), field) != p.missing_fields.end();
}

}  // namespace

// "H200" of "NVIDIA H200" or "H200 SXM", "H100" of "NVIDIA H100 80GB HBM3": the first word with a digit, upper case.
std::string gpu_model(const std::string& name) {
  std::string word;
  for (std::size_t i = 0; i <= name.size(); ++i) {
    const char c = i < name.size() ? name[i] : ' ';
    if (std::isalnum(static_cast<unsigned char>(c)) != 0) {
      word += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      continue;
    }
    if (std::any_of(word.begin(), word.end(), [](char w) { return std::isdigit(static_cast<unsigned char>(w)); })) {
      return word;
    }
    word.clear();
  }
  return "";
}

std::string profile_to_json(const Profile& p) {
  Json j;
  j["schema_version"] = Profile::kSchemaVersion;
  if (!p.declared_name.empty()) j["name"] = p.declared_name;
  j["context"] = p.context;
  Json compute = Json::object();
  for (const auto& [cls, table] : p.compute) {
    if (!is_missing(p, "compute." + cls)) compute[cls] = table_json(table);
  }
  j["compute"] = compute;
  if (!p.op_compute.empty()) {
    Json ops = Json::object();
    for (const auto& [stem, table] : p.op_compute) ops[stem] = table_json(table);
    j["op_compute"] = ops;
  }
  for (const TableSwitch& sw : kTableSwitches) j[sw.key] = p.*sw.field ? sw.on : sw.off;
  if (!is_missing(p, "memory_efficiency")) j["memory_efficiency"] = p.memory_efficiency;
  j["kernel_floor"] = p.kernel_floor_s;
  Json launch = Json::object();
  for (const auto& [cls, s] : p.launch_s) {
    if (!is_missing(p, "launch." + cls)) launch[cls] = s;
  }
  j["launch"] = launch;
  Json colls = Json::array();
  for (const auto& o : p.collectives) {
    colls.push_back({{"kind", to_string(o.kind)},
                     {"algorithm", to_string(o.algo)},
                     {"protocol", to_string(o.proto)},
                     {"span", to_string(o.span)}});
    // Unknown figures (negative: the cost model keeps its own) are left out, as the reader expects them.
    if (o.base_latency_s >= 0) colls.back()["base_latency"] = o.base_latency_s;
    if (o.step_latency_s >= 0) colls.back()["step_latency"] = o.step_latency_s;
    if (o.bus_bytes_per_s > 0) colls.back()["bus_bandwidth"] = o.bus_bytes_per_s;
    if (o.ranks != 0) colls.back()["ranks"] = o.ranks;
    if (!o.bus_efficiency.points.empty()) colls.back()["bus_efficiency"] = table_json(o.bus_efficiency);
  }
  j["collectives"] = colls;
  Json algos = Json::array(), protos = Json::array();
  for (auto a : p.nccl.algorithms) algos.push_back(to_string(a));
  for (auto q : p.nccl.protocols) protos.push_back(to_string(q));
  j["nccl"] = {{"algorithms", algos}, {"protocols", protos}};
  // Settings the reader defaults (NCCL's channel and peer counts, the tiles) only where they differ from it.
  const auto put_unless_default = [](Json& obj, const char* key, auto value, auto default_value) {
    if (value != default_value) obj[key] = value;
  };
  const NcclConfig nccl;
  put_unless_default(j["nccl"], "channels_intra", p.nccl.channels_intra, nccl.channels_intra);
  put_unless_default(j["nccl"], "channels_inter", p.nccl.channels_inter, nccl.channels_inter);
  put_unless_default(j["nccl"], "p2p_channels_nvlink", p.nccl.p2p_channels_nvlink, nccl.p2p_channels_nvlink);
  put_unless_default(j["nccl"], "p2p_channels_net", p.nccl.p2p_channels_net, nccl.p2p_channels_net);
  put_unless_default(j["nccl"], "p2p_peers_per_round", p.nccl.p2p_peers_per_round, nccl.p2p_peers_per_round);
  put_unless_default(j["nccl"], "net_overhead", p.nccl.net_overhead_s, nccl.net_overhead_s);
  const Interference interference;
  j["interference"] = {{"comm_hbm_bytes_per_bus_byte", p.interference.comm_hbm_bytes_per_bus_byte},
                       {"waiting_sms_per_channel", p.interference.waiting_sms_per_channel}};
  if (p.interference.waiting_sms_per_channel_more >= 0) {
    j["interference"]["waiting_sms_per_channel_more"] = p.interference.waiting_sms_per_channel_more;
  }
  put_unless_default(j["interference"], "attention_tile_q", p.interference.attention_tile_q,
                     interference.attention_tile_q);
  put_unless_default(j["interference"], "gemm_tile_m", p.interference.gemm_tile_m, interference.gemm_tile_m);
  put_unless_default(j["interference"], "gemm_tile_n", p.interference.gemm_tile_n, interference.gemm_tile_n);
  Json fw = Json::object();
  for (const auto& fld : kFrameworkFields) {
    if (p.framework.*fld.member >= 0) fw[fld.key] = p.framework.*fld.member;
  }
  for (const auto& [call, table] : p.framework.moe_routing_calls) fw["moe_routing_calls"][call] = table_json(table);
  if (!fw.empty()) {
    fw["source"] = p.framework.source;
    j["framework"] = fw;
  }
  const MemoryOverhead& mo = p.memory_overhead;
  if (mo.cuda_context_bytes >= 0 || mo.cublas_workspace_bytes >= 0 || mo.nccl_buffer_bytes_per_channel >= 0 ||
      mo.allocator_reserved_over_allocated >= 0) {
    Json m = Json::object();
    if (mo.cuda_context_bytes >= 0) m["cuda_context_bytes"] = mo.cuda_context_bytes;
    if (mo.cublas_workspace_bytes >= 0) m["cublas_workspace_bytes"] = mo.cublas_workspace_bytes;
    if (mo.nccl_buffer_bytes_per_channel >= 0) m["nccl_buffer_bytes_per_channel"] = mo.nccl_buffer_bytes_per_channel;
    if (mo.allocator_reserved_over_allocated >= 0) {
      m["allocator_reserved_over_allocated"] = mo.allocator_reserved_over_allocated;
    }
    m["source"] = mo.source;
    j["memory_overhead"] = m;
  }
  // The copy engine only where it is not the default (profiles measured before it existed write back unchanged).
  const CopyEngine ce;
  if (p.copy_engine.nvlink_efficiency != ce.nvlink_efficiency || p.copy_engine.source != ce.source) {
    j["copy_engine"] = {{"nvlink_efficiency", p.copy_engine.nvlink_efficiency}, {"source", p.copy_engine.source}};
  }
  if (p.clock_model.present()) {
    const ClockModel& m = p.clock_model;
    Json c = {{"mode", to_string(m.mode)},
              {"power_limit_w", m.power_limit_w},
              {"idle_w", m.idle_w},
              {"max_mhz", m.max_mhz},
              {"min_mhz", m.min_mhz},
              {"power_exponent", m.power_exponent},
              {"time_exponent", m.time_exponent},
              {"gemm_power_w", table_json(m.gemm_power_w)},
              {"attention_w", m.attention_w},
              {"memory_w", m.memory_w},
              {"comm_w", m.comm_w},
              {"measured_mhz", m.measured_mhz},
              {"source", m.source}};
    j["clock_model"] = c;
  }
  Json fits = Json::array();
  for (const auto& f : p.fits) {
    fits.push_back({{"name", f.name},
                    {"points", f.points},
                    {"mean_abs_rel_error", f.mean_abs_rel_error},
                    {"max_abs_rel_error", f.max_abs_rel_error},
                    {"note", f.note}});
  }
  j["fits"] = fits;
  return j.dump(2) + "\n";
}

std::vector<std::string> profile_warnings(const Profile& profile, const topologies::Cluster& cluster) {
  std::vector<std::string> out;
  const auto gpu = profile.context.find("gpu");
  const std::string& cluster_gpu = cluster.node.gpu.name;
  if (gpu != profile.context.end() && gpu_model(gpu->second) != gpu_model(cluster_gpu)) {
    out.push_back("profile " + profile.name + " was measured on " + gpu->second + ", but the cluster's GPU is " +
                  cluster_gpu + ": its efficiencies and latencies are another GPU's (calibrate on " + cluster_gpu +
                  ": twinstep calibrate)");
  }
  if (!profile.missing_fields.empty()) {
    std::string list;
    for (const auto& f : profile.missing_fields) list += (list.empty() ? "" : ", ") + f;
    out.push_back("profile " + profile.name + " lacks " + list + ": datasheet values used");
  }
  return out;
}

Profile read_profile(const std::string& path) { return profile_from_json(read_file(path), path); }

}  // namespace twinstep::sim
