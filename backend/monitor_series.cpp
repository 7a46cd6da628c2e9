#include "backend/monitor_series.hpp"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.hpp"

namespace twinstep::backend {

namespace {

std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string short_number(double v, int digits = 6) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

/// The whole of `text` as a number; false when it is not one.
bool to_double(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(text.c_str(), &end);
  return end != nullptr && *end == '\0' && errno == 0;
}

std::string temp_sibling(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

[[noreturn]] void cannot_write(const std::string& flag, const std::string& path, const std::string& why) {
  throw Error(flag + " " + path + ": cannot write the monitor series (" + why +
              "); give a path in an existing, writable folder");
}

}  // namespace

double parse_monitor_interval_ms(const char* value) {
  if (value == nullptr || *value == '\0') return kMonitorIntervalDefaultMs;
  double ms = 0;
  if (!to_double(value, ms) || !std::isfinite(ms) || ms < kMonitorIntervalMinMs || ms > kMonitorIntervalMaxMs) {
    throw Error(std::string(kMonitorIntervalEnv) + "=\"" + value +
                "\": the GPU monitor's sampling interval must be a " + "number of milliseconds in [" +
                short_number(kMonitorIntervalMinMs) + ", " + short_number(kMonitorIntervalMaxMs) + "] (default " +
                short_number(kMonitorIntervalDefaultMs) + ")");
  }
  return ms;
}

double monitor_interval_ms_from_env() {
  return parse_monitor_interval_ms(std::getenv(kMonitorIntervalEnv));  // NOLINT(concurrency-mt-unsafe): read-only
}

std::optional<std::string> unavailable_after(const std::string& text, const std::string& prefix) {
  if (text.rfind(prefix, 0) != 0) return std::nullopt;
  const std::string why = text.substr(prefix.size());
  return why.empty() ? std::string("no reason given") : why;
}

std::vector<std::string> split_fields(const std::string& line, char sep) {
  std::vector<std::string> f;
  std::istringstream in(line);
  for (std::string part; std::getline(in, part, sep);) f.push_back(part);
  return f;
}

std::string encode_series(const GpuSeries& s) {
  if (!s.unavailable.empty()) return "series|unavailable|" + s.unavailable;
  std::string out = "series|ok|" + s.power_source + "|" + exact(s.interval_ms) + "|" + std::to_string(s.dropped) + "|" +
                    std::to_string(s.samples.size());
  for (const auto& x : s.samples) {
    out += "\n" + std::to_string(x.t_ns) + " " + std::to_string(x.step) + " " + std::to_string(x.t_step_ns) + " " +
           exact(x.sm_clock_mhz) + " " + exact(x.power_w) + " " + std::to_string(x.event_reasons);
  }
  return out;
}

GpuSeries decode_series(const std::string& text) {
  auto bad = [&](const std::string& what) {
    return Error("gpu monitor: malformed series (" + what + "; a backend of another revision on some rank?)");
  };
  GpuSeries s;
  std::istringstream in(text);
  std::string head;
  std::getline(in, head);
  if (auto why = unavailable_after(text, "series|unavailable|")) {
    s.unavailable = *why;
    return s;
  }
  const std::vector<std::string> f = split_fields(head, '|');
  double interval = 0, dropped = 0, count = 0;
  if (f.size() != 6 || f[0] != "series" || f[1] != "ok" || !to_double(f[3], interval) || !to_double(f[4], dropped) ||
      !to_double(f[5], count)) {
    throw bad("header \"" + head + "\"");
  }
  s.power_source = f[2];
  s.interval_ms = interval;
  s.dropped = static_cast<std::uint64_t>(dropped);
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    SeriesSample x;
    std::string rest;
    if (!(ls >> x.t_ns >> x.step >> x.t_step_ns >> x.sm_clock_mhz >> x.power_w >> x.event_reasons) || (ls >> rest)) {
      throw bad("sample line \"" + line + "\"");
    }
    s.samples.push_back(x);
  }
  if (static_cast<double>(s.samples.size()) != count) {
    throw bad(std::to_string(s.samples.size()) + " sample lines where the header says " + f[5]);
  }
  return s;
}

void check_series_path(const std::string& path, const std::string& flag) {
  const std::string tmp = temp_sibling(path);
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) cannot_write(flag, path, std::strerror(errno));  // NOLINT(concurrency-mt-unsafe)
  std::fclose(f);
  std::remove(tmp.c_str());
}

void write_series_csv(const std::vector<GpuSeries>& per_rank, const std::string& path, const std::string& flag) {
  std::ostringstream out;
  out << "# twinstep GPU monitor series v1: SM clock, board power and NVML clock event reasons against time\n";
  out << "# t_ns: ns since this rank's first measured step's host origin (steady_clock, the trace's host axis); "
         "t_step_ns: ns since the sample's own step's host origin; samples only during the measured steps' GPU work\n";
  for (std::size_t r = 0; r < per_rank.size(); ++r) {
    const GpuSeries& s = per_rank[r];
    out << "# rank " << r << ": ";
    if (!s.unavailable.empty()) {
      out << "unavailable: " << s.unavailable << "\n";
      continue;
    }
    out << s.samples.size() << " samples every " << short_number(s.interval_ms) << " ms, power " << s.power_source;
    if (s.dropped > 0) {
      out << "; CAPPED: " << s.dropped << " later samples dropped (at most " << kMonitorMaxSamples << " kept)";
    }
    out << "\n";
  }
  out << "rank,step,t_ns,t_step_ns,sm_clock_mhz,power_w,event_reasons\n";
  for (std::size_t r = 0; r < per_rank.size(); ++r) {
    for (const auto& x : per_rank[r].samples) {
      out << r << "," << x.step << "," << x.t_ns << "," << x.t_step_ns << "," << short_number(x.sm_clock_mhz) << ","
          << short_number(x.power_w, 10) << "," << x.event_reasons << "\n";
    }
  }
  const std::string tmp = temp_sibling(path);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) cannot_write(flag, path, std::strerror(errno));  // NOLINT(concurrency-mt-unsafe)
    f << out.str();
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      cannot_write(flag, path, "writing " + tmp + " failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);  // NOLINT(concurrency-mt-unsafe)
    std::remove(tmp.c_str());
    cannot_write(flag, path, "renaming " + tmp + ": " + why);
  }
}

}  // namespace twinstep::backend
