// PyTorch profiler (Kineto) Chrome-trace JSON -> RankEvents. The format, as torch 2.x's export_chrome_trace writes
// it: an object with "traceEvents" (complete events, "ph": "X", times in microseconds as decimals) and optional
// "distributedInfo" {"rank"}, "deviceProperties" [{"name"}], "baseTimeNanoseconds" and metadata added with
// add_metadata_json. Event categories used: "kernel", "gpu_memcpy", "gpu_memset" (GPU side, args "stream" and
// "correlation"), "cuda_runtime"/"cuda_driver" (the launching API call, args "correlation"), "user_annotation"
// (record_function ranges) and "cpu_op" (framework ops, args "Input Dims" with record_shapes=True).
// docs/import-trace.md.
#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "calibration/trace_import/events.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"

namespace twinstep::calibration::trace_import {
namespace {

using Json = nlohmann::json;

Nanos micros_to_ns(double us) { return static_cast<Nanos>(std::llround(us * 1000.0)); }

struct Reader {
  std::string path;
  std::map<std::string, std::uint64_t> threads;  // "pid/tid" -> dense id

  [[noreturn]] void fail(std::size_t index, const std::string& what) const {
    throw ParseError(path, "/traceEvents/" + std::to_string(index), what);
  }
  std::uint64_t thread(const Json& e) {
    auto word = [](const Json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
    const std::string key = word(e.value("pid", Json(0))) + "/" + word(e.value("tid", Json(0)));
    return threads.emplace(key, threads.size()).first->second;
  }
  double number(const Json& e, const char* field, std::size_t index) const {
    const auto it = e.find(field);
    if (it == e.end() || !it->is_number()) {
      fail(index, std::string("field \"") + field + "\" " + (it == e.end() ? "is missing" : "is not a number") +
                      " in a complete (\"ph\": \"X\") event; the file is not a PyTorch profiler trace or was edited");
    }
    return it->get<double>();
  }
};

std::vector<std::vector<std::int64_t>> input_dims(const Json& args) {
  std::vector<std::vector<std::int64_t>> dims;
  const auto it = args.find("Input Dims");
  if (it == args.end() || !it->is_array()) return dims;
  for (const auto& d : *it) {
    std::vector<std::int64_t> shape;
    if (d.is_array()) {
      for (const auto& x : d) {
        if (x.is_number_integer()) shape.push_back(x.get<std::int64_t>());
      }
    }
    dims.push_back(std::move(shape));
  }
  return dims;
}

bool is_wait_call(const std::string& name) {
  return name.find("Synchronize") != std::string::npos || name == "cudaMemcpy" || name == "cuMemcpyDtoH_v2";
}

/// The document, with its "traceEvents" array checked.
Json read_document(const std::string& path) {
  Json doc;
  try {
    doc = parse_json(read_file(path), path);
  } catch (const ParseError& e) {
    throw Error(std::string(e.what()) +
                " (a truncated file? the profiler writes the whole trace when export_chrome_trace returns; export it "
                "again)");
  }
  if (!doc.is_object() || !doc.contains("traceEvents") || !doc["traceEvents"].is_array()) {
    throw ParseError(
        path, "/traceEvents",
        "no \"traceEvents\" array: not a PyTorch profiler Chrome trace (write one with "
        "torch.profiler.profile(...).export_chrome_trace(PATH), or give an Nsight Systems .sqlite export)");
  }
  return doc;
}

/// What the trace says of itself: its rank (distributedInfo), its GPU (deviceProperties), the schedule it ran
/// (twinstep_schedule, added with add_metadata_json: an object or a JSON string).
void read_header(const Json& doc, const std::string& path, RankEvents& out) {
  if (const auto it = doc.find("distributedInfo"); it != doc.end() && it->is_object() && it->contains("rank")) {
    if (!(*it)["rank"].is_number_integer() || (*it)["rank"].get<std::int64_t>() < 0) {
      throw ParseError(path, "/distributedInfo/rank", "must be a rank number >= 0");
    }
    out.rank = static_cast<std::uint32_t>((*it)["rank"].get<std::int64_t>());
    out.rank_known = true;
  }
  if (const auto it = doc.find("deviceProperties"); it != doc.end() && it->is_array() && !it->empty()) {
    if ((*it)[0].is_object() && (*it)[0].contains("name") && (*it)[0]["name"].is_string()) {
      out.context["gpu"] = (*it)[0]["name"].get<std::string>();
    }
  }
  if (const auto it = doc.find("twinstep_schedule"); it != doc.end()) {
    Json meta = *it;
    if (meta.is_string()) {
      try {
        meta = Json::parse(meta.get<std::string>());
      } catch (const Json::exception&) {
        meta = Json::object();
      }
    }
    if (meta.is_object()) {
      if (meta.contains("sha256") && meta["sha256"].is_string()) out.context["schedule_sha256"] = meta["sha256"];
      if (meta.contains("name") && meta["name"].is_string()) out.context["schedule_name"] = meta["name"];
    }
  }
}

/// The complete ("ph": "X") events: GPU activities into `out`; launch calls (matched to their activities by
/// correlation id), synchronising calls, record_function ranges and framework ops with shapes into `host`.
void read_events(const Json& events, Reader& r, RankEvents& out, HostSide& host) {
  std::map<std::int64_t, HostInstant> launch_by_corr;
  std::vector<std::int64_t> activity_corr;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const Json& e = events[i];
    if (!e.is_object()) r.fail(i, "an event is not a JSON object");
    const auto ph = e.find("ph");
    if (ph == e.end() || !ph->is_string()) r.fail(i, "field \"ph\" (the event phase) is missing or not a string");
    if (ph->get<std::string>() != "X") continue;
    const std::string cat = e.value("cat", std::string());
    const auto name_it = e.find("name");
    if (name_it == e.end() || !name_it->is_string()) r.fail(i, "field \"name\" is missing or not a string");
    const std::string name = name_it->get<std::string>();
    const Nanos ts = micros_to_ns(r.number(e, "ts", i));
    const Nanos dur = micros_to_ns(r.number(e, "dur", i));
    if (dur < 0) r.fail(i, "field \"dur\" is negative");
    static const Json kEmpty = Json::object();
    const Json& args = e.contains("args") && e["args"].is_object() ? e["args"] : kEmpty;
    auto corr = [&]() -> std::int64_t {
      const auto c = args.find("correlation");
      return c != args.end() && c->is_number_integer() ? c->get<std::int64_t>() : -1;
    };
    if (cat == "kernel" || cat == "gpu_memcpy" || cat == "gpu_memset") {
      GpuActivity a;
      a.kind = cat == "kernel"       ? ActivityKind::kKernel
               : cat == "gpu_memcpy" ? ActivityKind::kMemcpy
                                     : ActivityKind::kMemset;
      a.name = name;
      const auto s = args.find("stream");
      a.stream = s != args.end() && s->is_number_integer() ? s->get<std::int64_t>() : 0;
      a.start_ns = ts;
      a.end_ns = ts + dur;
      a.where = r.path + ": traceEvents[" + std::to_string(i) + "]";
      out.activities.push_back(std::move(a));
      activity_corr.push_back(corr());
    } else if (cat == "cuda_runtime" || cat == "cuda_driver") {
      const std::uint64_t th = r.thread(e);
      if (const std::int64_t c = corr(); c >= 0) launch_by_corr[c] = HostInstant{th, ts};
      if (is_wait_call(name)) {
        host.waits.push_back(HostWait{ts, ts + dur, {}, {}});
        host.wait_at.push_back(HostInstant{th, ts});
      }
    } else if (cat == "user_annotation") {
      host.ranges.push_back(HostInterval{r.thread(e), ts, ts + dur});
      host.range_names.push_back(name);
    } else if (cat == "cpu_op") {
      auto dims = input_dims(args);
      if (!dims.empty()) {
        host.op_intervals.push_back(HostInterval{r.thread(e), ts, ts + dur});
        host.ops.push_back(LaunchOp{name, std::move(dims), ts});
      }
    }
  }
  host.launch.resize(activity_corr.size());
  for (std::size_t k = 0; k < activity_corr.size(); ++k) {
    if (const auto it = launch_by_corr.find(activity_corr[k]); it != launch_by_corr.end()) host.launch[k] = it->second;
  }
}

}  // namespace

RankEvents read_kineto(const std::string& path) {
  const Json doc = read_document(path);
  RankEvents out;
  out.source = path;
  read_header(doc, path, out);
  Reader r{path, {}};
  HostSide host;
  read_events(doc["traceEvents"], r, out, host);
  attach_host_side(out, std::move(host));
  out.context["format"] = "pytorch-profiler-chrome-trace";
  return out;
}

}  // namespace twinstep::calibration::trace_import
