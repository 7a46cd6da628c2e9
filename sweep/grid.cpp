// Grid expansion: the cartesian product of a Spec, the auto-layout enumeration under Megatron-Core's divisibility
// rules, point keys (canonical JSON) and shards. Nothing here lowers or simulates; see runner.cpp.
#include "sweep/grid.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "sim/clock_model.hpp"
#include "sim/cost_model.hpp"
#include "sim/profile_choice.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sweep {
namespace {

std::string str(std::uint64_t v) { return std::to_string(v); }

std::vector<std::uint32_t> divisors(std::uint32_t n) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t d = 1; d <= n; ++d) {
    if (n % d == 0) out.push_back(d);
  }
  return out;
}

ModelShape shape_of(const models::ModelSpec& m) {
  ModelShape s;
  s.layers = m.num_layers;
  s.heads = m.num_attention_heads;
  s.query_groups = m.num_query_groups;
  s.experts = m.num_moe_experts;
  s.ffn = m.ffn_hidden_size;
  return s;
}

// JSON field readers for the sweep file: a scalar is accepted where a list is expected.
std::vector<std::string> strings_field(const nlohmann::json& v, const std::string& source, const std::string& field) {
  std::vector<std::string> out;
  auto one = [&](const nlohmann::json& x) {
    if (!x.is_string()) throw ParseError(source, "/" + field, "expected a string or a list of strings");
    out.push_back(x.get<std::string>());
  };
  if (v.is_array()) {
    for (const auto& x : v) one(x);
  } else {
    one(v);
  }
  if (out.empty()) throw ParseError(source, "/" + field, "the list is empty; give at least one value");
  return out;
}

/// A list of mode names (or one), each read by the mode's parser; errors name `source` and the field.
template <typename E>
std::vector<E> modes_field(const nlohmann::json& v, const std::string& source, const std::string& field,
                           E (*parse)(std::string_view, std::string_view)) {
  std::vector<E> out;
  for (const auto& name : strings_field(v, source, field)) {
    out.push_back(reading_names(source, "/" + field, [&] { return parse(name, field); }));
  }
  return out;
}

std::vector<std::uint32_t> uints_field(const nlohmann::json& v, const std::string& source, const std::string& field) {
  std::vector<std::uint32_t> out;
  auto one = [&](const nlohmann::json& x) {
    if (!x.is_number_unsigned() || x.get<std::uint64_t>() == 0 || x.get<std::uint64_t>() > 0xffffffffull) {
      throw ParseError(source, "/" + field, "expected a positive integer or a list of them");
    }
    out.push_back(x.get<std::uint32_t>());
  };
  if (v.is_array()) {
    for (const auto& x : v) one(x);
  } else {
    one(v);
  }
  if (out.empty()) throw ParseError(source, "/" + field, "the list is empty; give at least one value");
  return out;
}

}  // namespace

std::string Layout::describe() const {
  return "tp" + str(tp) + " pp" + str(pp) + " vpp" + str(vpp) + " cp" + str(cp) + " ep" + str(ep) + " dp" + str(dp) +
         " mbs" + str(mbs);
}

std::vector<std::string> split_list(const std::string& text, const std::string& flag) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) throw Error(flag + " \"" + text + "\": empty item; give a comma-separated list");
    for (const auto& seen : out) {
      if (seen == item) throw Error(flag + ": \"" + item + "\" is listed twice");
    }
    out.push_back(item);
  }
  if (out.empty()) throw Error(flag + ": give at least one value");
  return out;
}

std::vector<std::uint32_t> split_uints(const std::string& text, const std::string& flag) {
  std::vector<std::uint32_t> out;
  for (const auto& item : split_list(text, flag)) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(item.c_str(), &end, 10);
    if (end == item.c_str() || *end != '\0' || v == 0 || v > 0xffffffffull || item[0] == '-') {
      throw Error(flag + ": \"" + item + "\" is not a positive integer");
    }
    out.push_back(static_cast<std::uint32_t>(v));
  }
  return out;
}

namespace {

/// One key of a sweep file (or of its "parallel" object) and how its value sets the spec; `field` is the key's path
/// without the leading '/' ("gpus", "parallel/tp"), for messages.
struct SpecField {
  const char* key;
  void (*read)(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field);
};

/// Reads the keys of `j` (at `prefix`: "" or "parallel") through `table`; a key outside it is refused by name.
template <std::size_t N>
void read_spec_fields(const SpecField (&table)[N], const nlohmann::json& j, Spec& s, const std::string& source,
                      const std::string& prefix) {
  for (const auto& item : j.items()) {
    const std::string& k = item.key();
    const std::string field = prefix.empty() ? k : prefix + "/" + k;
    const auto* f = std::find_if(std::begin(table), std::end(table), [&](const SpecField& t) { return k == t.key; });
    if (f == std::end(table)) {
      std::vector<std::string> accepted;
      for (const auto& t : table) accepted.emplace_back(t.key);
      throw ParseError(source, "/" + field, unknown_field_message(k, accepted));
    }
    f->read(s, item.value(), source, field);
  }
}

// The readers of the tables' values, one per kind of field (member: the Spec member it sets).
template <auto member>
void read_uints(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field) {
  s.*member = uints_field(v, source, field);
}
template <auto member>
void read_strings(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field) {
  s.*member = strings_field(v, source, field);
}
template <auto member, auto parse>
void read_modes(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field) {
  s.*member = modes_field(v, source, field, parse);
}
template <auto member>
void read_path(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field) {
  if (!v.is_string()) throw ParseError(source, "/" + field, "expected a path string");
  s.*member = v.get<std::string>();
}

void read_clock_model(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field) {
  if (!v.is_string()) throw ParseError(source, "/" + field, "expected \"none\" or \"power-cap\"");
  const std::string text = v.get<std::string>();
  s.clock_model = reading_names(source, "/" + field, [&] { return sim::parse_clock_mode(text, field); });
}

/// The layout lists of an explicit "parallel" object.
constexpr SpecField kParallelFields[] = {{"tp", read_uints<&Spec::tp>},
                                         {"pp", read_uints<&Spec::pp>},
                                         {"vpp", read_uints<&Spec::vpp>},
                                         {"cp", read_uints<&Spec::cp>},
                                         {"ep", read_uints<&Spec::ep>}};

void read_parallel(Spec& s, const nlohmann::json& v, const std::string& source, const std::string& field) {
  if (v.is_string() && v.get<std::string>() == "auto") {
    s.auto_layout = true;
  } else if (v.is_object()) {
    read_spec_fields(kParallelFields, v, s, source, field);
  } else {
    throw ParseError(source, "/" + field, "expected \"auto\" or an object of lists {\"tp\": [...], ...}");
  }
}

/// The keys of a sweep file.
constexpr SpecField kSpecFields[] = {
    {"models", read_strings<&Spec::models>},
    {"clusters", read_strings<&Spec::clusters>},
    {"gpus", read_uints<&Spec::gpus>},
    {"gbs", read_uints<&Spec::gbs>},
    {"seq", read_uints<&Spec::seq>},
    {"mbs", read_uints<&Spec::mbs>},
    {"parallel", read_parallel},
    {"overlap", read_modes<&Spec::overlaps, models::parse_overlap_variant>},
    {"dispatcher", read_modes<&Spec::dispatchers, models::parse_token_dispatcher>},
    {"fidelity", read_modes<&Spec::fidelities, sim::parse_fidelity>},
    {"profile", read_path<&Spec::profile>},
    {"config", read_path<&Spec::base_config>},
    {"clock_model", read_clock_model},
};

}  // namespace

Spec spec_from_json(const std::string& text, const std::string& source) {
  const nlohmann::json j = parse_json(text, source);
  if (!j.is_object()) throw ParseError(source, "", "a sweep file is a JSON object");
  Spec s;
  read_spec_fields(kSpecFields, j, s, source, "");
  return s;
}

std::string layout_problem(const ModelShape& m, const Point& p, std::uint32_t gpus_per_node, bool tp_within_node) {
  const Layout& l = p.layout;
  if (l.tp == 0 || l.pp == 0 || l.vpp == 0 || l.cp == 0 || l.ep == 0 || l.mbs == 0) {
    return "parallel sizes and micro_batch_size must be >= 1";
  }
  const std::uint64_t tpc = std::uint64_t{l.tp} * l.pp * l.cp;
  if (p.gpus % tpc != 0) {
    return "tp x pp x cp = " + str(tpc) + " does not divide " + str(p.gpus) + " GPUs";
  }
  if (tp_within_node && gpus_per_node > 0 && l.tp > gpus_per_node) {
    return "tp " + str(l.tp) + " exceeds the " + str(gpus_per_node) + " GPUs of a node";
  }
  if (m.heads % l.tp != 0 || m.query_groups % l.tp != 0) {
    return "tp " + str(l.tp) + " does not divide num_attention_heads " + str(m.heads) + " and num_query_groups " +
           str(m.query_groups);
  }
  if (m.ffn > 0 && m.ffn % l.tp != 0) return "tp " + str(l.tp) + " does not divide ffn_hidden_size " + str(m.ffn);
  if (l.vpp > 1 && l.pp == 1) return "vpp " + str(l.vpp) + " needs pp > 1 (interleaving)";
  if (m.layers % l.pp != 0) return "pp " + str(l.pp) + " does not divide num_layers " + str(m.layers);
  if ((m.layers / l.pp) % l.vpp != 0) {
    return "vpp " + str(l.vpp) + " does not divide the " + str(m.layers / l.pp) + " layers per pipeline stage";
  }
  if (l.cp > 1 && p.seq % (2 * l.cp) != 0) {
    return "seq_length " + str(p.seq) + " is not divisible by 2 x cp = " + str(2 * l.cp);
  }
  if (l.tp > 1 && (std::uint64_t{p.seq} * l.mbs / l.cp) % l.tp != 0) {
    return "sequence parallelism needs seq x mbs / cp divisible by tp " + str(l.tp);
  }
  if (l.ep > 1) {
    if (m.experts == 0) return "ep " + str(l.ep) + " > 1 needs an MoE model";
    if (m.experts % l.ep != 0) return "ep " + str(l.ep) + " does not divide num_moe_experts " + str(m.experts);
    const std::uint64_t expert_model = std::uint64_t{l.tp} * l.ep * l.pp;  // expert TP = TP (MCore default)
    if (p.gpus % expert_model != 0) {
      return "tp x ep x pp = " + str(expert_model) + " does not divide " + str(p.gpus) + " GPUs (expert data parallel)";
    }
  }
  const std::uint32_t dp = static_cast<std::uint32_t>(p.gpus / tpc);
  const std::uint64_t per_step = std::uint64_t{l.mbs} * dp;
  if (p.gbs % per_step != 0) {
    return "global batch " + str(p.gbs) + " is not divisible by mbs x dp = " + str(per_step);
  }
  const std::uint64_t micro = p.gbs / per_step;
  if (l.vpp > 1 && (micro < l.pp || micro % l.pp != 0)) {
    return "interleaving needs the " + str(micro) + " micro-batches per rank to be a multiple of pp " + str(l.pp);
  }
  return "";
}

std::vector<Layout> auto_layouts(const ModelShape& m, std::uint32_t gpus, std::uint32_t gpus_per_node,
                                 std::uint32_t gbs, std::uint32_t seq, const std::vector<std::uint32_t>& mbs_list,
                                 std::vector<std::pair<Layout, std::string>>* rejected) {
  std::vector<Layout> out;
  Point p;
  p.gpus = gpus;
  p.gbs = gbs;
  p.seq = seq;
  for (std::uint32_t tp : divisors(gpus)) {
    if (gpus_per_node > 0 && tp > gpus_per_node) continue;  // TP stays inside a node: not a candidate
    for (std::uint32_t pp : divisors(gpus / tp)) {
      if (pp > m.layers) continue;
      std::vector<std::uint32_t> vpps{1};
      if (pp > 1 && m.layers % pp == 0) {
        for (std::uint32_t v : divisors(m.layers / pp)) {
          if (v > 1) vpps.push_back(v);
        }
      }
      for (std::uint32_t vpp : vpps) {
        for (std::uint32_t cp : divisors(gpus / (tp * pp))) {
          if (2ull * cp > seq) continue;
          std::vector<std::uint32_t> eps{1};
          if (m.experts > 0) {
            for (std::uint32_t e : divisors(gpus)) {
              if (e > 1 && e <= m.experts) eps.push_back(e);
            }
          }
          for (std::uint32_t ep : eps) {
            for (std::uint32_t mbs : mbs_list) {
              p.layout = Layout{tp, pp, vpp, cp, ep, gpus / (tp * pp * cp), mbs};
              const std::string why = layout_problem(m, p, gpus_per_node, true);
              if (why.empty()) {
                out.push_back(p.layout);
              } else if (rejected != nullptr) {
                rejected->emplace_back(p.layout, why);
              }
            }
          }
        }
      }
    }
  }
  return out;
}

std::vector<Point> expand(const Spec& spec) {
  if (spec.models.empty()) throw Error("sweep: no model given; use --model or \"models\" in the sweep file");
  if (spec.clusters.empty()) throw Error("sweep: no cluster given; use --cluster or \"clusters\" in the sweep file");
  if (spec.gpus.empty()) throw Error("sweep: no GPU count given; use --gpus 16,32,... or \"gpus\" in the sweep file");
  if (spec.gbs.empty() || spec.seq.empty() || spec.mbs.empty() || spec.overlaps.empty() || spec.dispatchers.empty() ||
      spec.fidelities.empty()) {
    throw Error("sweep: gbs, seq, mbs, overlap, dispatcher and fidelity lists must not be empty");
  }
  if (!spec.profile.empty()) {
    if (const std::string path = sim::profile_path(spec.profile); !path.empty()) (void)sim::read_profile(path);
  }
  if (!spec.base_config.empty()) (void)models::read_run_config(spec.base_config);

  std::vector<Point> out;
  for (const auto& model_id : spec.models) {
    const models::ModelSpec model = models::load_model(model_id);
    const ModelShape shape = shape_of(model);
    // The dispatcher only changes MoE layers: a dense model is swept with the first one.
    const std::vector<models::TokenDispatcher> dispatchers =
        model.num_moe_experts > 0 ? spec.dispatchers : std::vector{spec.dispatchers.front()};
    for (const auto& cluster_id : spec.clusters) {
      (void)topologies::load_cluster(cluster_id);  // unknown ids are bad input, not invalid points
      for (const auto& fidelity : spec.fidelities) {
        for (std::uint32_t gpus : spec.gpus) {
          Point base;
          base.model = model_id;
          base.cluster = cluster_id;
          base.profile = spec.profile;
          base.base_config = spec.base_config;
          base.fidelity = fidelity;
          base.clock_model = spec.clock_model;
          base.gpus = gpus;
          std::uint32_t gpn = 0;
          std::string cluster_problem;
          try {
            gpn = topologies::load_cluster(cluster_id, {0, gpus}).node.gpus_per_node;
          } catch (const Error& e) {
            cluster_problem = e.what();
          }
          for (std::uint32_t gbs : spec.gbs) {
            for (std::uint32_t seq : spec.seq) {
              base.gbs = gbs;
              base.seq = seq;
              std::vector<std::pair<Layout, std::string>> layouts;  // (layout, reason)
              if (!cluster_problem.empty()) {
                layouts.emplace_back(Layout{1, 1, 1, 1, 1, gpus, spec.mbs.front()}, cluster_problem);
              } else if (spec.auto_layout) {
                std::vector<std::pair<Layout, std::string>> rejected;
                for (const auto& l : auto_layouts(shape, gpus, gpn, gbs, seq, spec.mbs, &rejected)) {
                  layouts.emplace_back(l, "");
                }
                layouts.insert(layouts.end(), rejected.begin(), rejected.end());
                std::stable_sort(layouts.begin(), layouts.end(), [](const auto& a, const auto& b) {
                  const Layout& x = a.first;
                  const Layout& y = b.first;
                  return std::tie(x.tp, x.pp, x.vpp, x.cp, x.ep, x.mbs) <
                         std::tie(y.tp, y.pp, y.vpp, y.cp, y.ep, y.mbs);
                });
              } else {
                for (auto tp : spec.tp) {
                  for (auto pp : spec.pp) {
                    for (auto vpp : spec.vpp) {
                      for (auto cp : spec.cp) {
                        for (auto ep : spec.ep) {
                          for (auto mbs : spec.mbs) {
                            const std::uint64_t tpc = std::uint64_t{tp} * pp * cp;
                            Point p = base;
                            p.layout = Layout{
                                tp, pp, vpp, cp, ep, static_cast<std::uint32_t>(gpus % tpc == 0 ? gpus / tpc : 0), mbs};
                            layouts.emplace_back(p.layout, layout_problem(shape, p, gpn, false));
                          }
                        }
                      }
                    }
                  }
                }
              }
              for (const auto& [layout, reason] : layouts) {
                for (const auto& dispatcher : dispatchers) {
                  for (const auto& overlap : spec.overlaps) {
                    Point p = base;
                    p.layout = layout;
                    p.dispatcher = dispatcher;
                    p.overlap = overlap;
                    p.invalid_reason = reason;
                    p.index = out.size();
                    out.push_back(std::move(p));
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  return out;
}

std::vector<std::string> invalid_layout_fixes(const Spec& spec) {
  std::vector<std::string> out;
  if (spec.auto_layout) return out;
  auto join = [](const std::set<std::uint32_t>& v) {
    std::string s;
    for (const std::uint32_t x : v) s += (s.empty() ? "" : ", ") + str(x);
    return s;
  };
  auto add = [&](std::string line) {
    if (std::find(out.begin(), out.end(), line) == out.end()) out.push_back(std::move(line));
  };
  for (const auto& model_id : spec.models) {
    const ModelShape shape = shape_of(models::load_model(model_id));
    for (const auto& cluster_id : spec.clusters) {
      for (std::uint32_t gpus : spec.gpus) {
        std::uint32_t gpn = 0;
        try {
          gpn = topologies::load_cluster(cluster_id, {0, gpus}).node.gpus_per_node;
        } catch (const Error&) {
          continue;  // too many GPUs for the cluster: its reason says so, no layout fixes it
        }
        for (std::uint32_t gbs : spec.gbs) {
          for (std::uint32_t seq : spec.seq) {
            const std::vector<Layout> valid = auto_layouts(shape, gpus, gpn, gbs, seq, spec.mbs);
            if (valid.empty()) continue;
            const std::string where =
                model_id + " on " + str(gpus) + " GPUs (gbs " + str(gbs) + ", seq " + str(seq) + ")";
            bool named = false;
            const std::tuple<const char*, const std::vector<std::uint32_t>*, std::uint32_t Layout::*> sizes[] = {
                {"tp", &spec.tp, &Layout::tp},
                {"pp", &spec.pp, &Layout::pp},
                {"vpp", &spec.vpp, &Layout::vpp},
                {"cp", &spec.cp, &Layout::cp},
                {"ep", &spec.ep, &Layout::ep}};
            for (const auto& [name, given, member] : sizes) {
              std::set<std::uint32_t> usable;
              for (const Layout& l : valid) usable.insert(l.*member);
              const bool any =
                  std::any_of(given->begin(), given->end(), [&](std::uint32_t v) { return usable.count(v) > 0; });
              if (any) continue;
              named = true;
              add("--" + std::string(name) + " " + join({given->begin(), given->end()}) + " (sweep file: parallel/" +
                  name + "): no valid layout of " + where + " has " + name + " " +
                  join({given->begin(), given->end()}) + "; the valid layouts use " + name + " " + join(usable));
            }
            if (!named) {
              add("no combination of the --tp/--pp/--vpp/--cp/--ep lists is valid for " + where +
                  "; a valid one: " + valid.front().describe());
            }
          }
        }
      }
    }
  }
  return out;
}

nlohmann::json point_inputs(const Point& p) {
  nlohmann::json j;
  j["model"] = p.model;
  j["cluster"] = p.cluster;
  j["gpus"] = p.gpus;
  j["gbs"] = p.gbs;
  j["seq"] = p.seq;
  j["tp"] = p.layout.tp;
  j["pp"] = p.layout.pp;
  j["vpp"] = p.layout.vpp;
  j["cp"] = p.layout.cp;
  j["ep"] = p.layout.ep;
  j["dp"] = p.layout.dp;
  j["mbs"] = p.layout.mbs;
  j["overlap"] = models::to_string(p.overlap);
  j["dispatcher"] = to_string(p.dispatcher);
  j["fidelity"] = to_string(p.fidelity);
  j["profile"] = p.profile;
  j["config"] = p.base_config;
  if (p.clock_model) j["clock_model"] = sim::to_string(*p.clock_model);
  return j;
}

Point point_from_inputs(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw ParseError(source, "/key", "expected an object of point inputs");
  Point p;
  auto s = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_string()) throw ParseError(source, std::string("/key/") + k, "expected a string");
    return j[k].get<std::string>();
  };
  auto u = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_number_unsigned()) {
      throw ParseError(source, std::string("/key/") + k, "expected a non-negative integer");
    }
    return j[k].get<std::uint32_t>();
  };
  p.model = s("model");
  p.cluster = s("cluster");
  // A mode field: its parser's message, with the file and the field's pointer.
  auto mode = [&](const char* k, auto parse) {
    const std::string text = s(k);
    return reading_names(source, std::string("/key/") + k, [&] { return parse(text, k); });
  };
  p.overlap = mode("overlap", models::parse_overlap_variant);
  p.dispatcher = mode("dispatcher", models::parse_token_dispatcher);
  p.fidelity = mode("fidelity", sim::parse_fidelity);
  p.profile = s("profile");
  p.base_config = s("config");
  if (j.contains("clock_model")) p.clock_model = mode("clock_model", sim::parse_clock_mode);
  p.gpus = u("gpus");
  p.gbs = u("gbs");
  p.seq = u("seq");
  p.layout = Layout{u("tp"), u("pp"), u("vpp"), u("cp"), u("ep"), u("dp"), u("mbs")};
  return p;
}

std::string point_key(const Point& p) { return point_inputs(p).dump(); }

Shard parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  auto bad = [&]() { return Error("--shard \"" + text + "\": expected I/N with 0 <= I < N, e.g. 0/4"); };
  if (slash == std::string::npos) throw bad();
  const std::string a = text.substr(0, slash), b = text.substr(slash + 1);
  if (a.empty() || b.empty() || a.find_first_not_of("0123456789") != std::string::npos ||
      b.find_first_not_of("0123456789") != std::string::npos || a.size() > 9 || b.size() > 9) {
    throw bad();
  }
  Shard s{static_cast<std::uint32_t>(std::stoul(a)), static_cast<std::uint32_t>(std::stoul(b))};
  if (s.count == 0 || s.index >= s.count) throw bad();
  return s;
}

Shard shard_from_env() {
  const std::pair<const char*, const char*> vars[] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                                      {"PMI_RANK", "PMI_SIZE"}};
  for (const auto& [rank_var, size_var] : vars) {
    const char* r = std::getenv(rank_var);
    const char* n = std::getenv(size_var);
    if (r != nullptr && n != nullptr) {
      try {
        return parse_shard(std::string(r) + "/" + n);
      } catch (const Error&) {
        throw Error(std::string(rank_var) + "=" + r + " / " + size_var + "=" + n + " is not a valid rank/size pair");
      }
    }
  }
  return {};
}

std::vector<Point> select_shard(const std::vector<Point>& points, const Shard& shard) {
  std::vector<Point> out;
  for (const auto& p : points) {
    if (p.index % shard.count == shard.index) out.push_back(p);
  }
  return out;
}

std::string predict_command(const Point& p) {
  const Layout& l = p.layout;
  std::string c = "twinstep predict --model " + p.model + " --cluster " + p.cluster + " --gpus " +
                  std::to_string(p.gpus) + " --tp " + std::to_string(l.tp) + " --pp " + std::to_string(l.pp);
  if (l.vpp > 1) c += " --vpp " + std::to_string(l.vpp);
  if (l.cp > 1) c += " --cp " + std::to_string(l.cp);
  if (l.ep > 1) c += " --ep " + std::to_string(l.ep) + " --dispatcher " + to_string(p.dispatcher);
  c += " --mbs " + std::to_string(l.mbs) + " --gbs " + std::to_string(p.gbs) + " --seq " + std::to_string(p.seq);
  if (!p.base_config.empty()) c += " --config " + p.base_config;
  if (!p.profile.empty()) c += " --profile " + p.profile;
  if (p.clock_model) c += " --clock-model " + sim::to_string(*p.clock_model);
  return c + " --fidelity " + to_string(p.fidelity) + " --overlap " + models::to_string(p.overlap);
}

}  // namespace twinstep::sweep
