// Unit parsing and formatting for the quantities in input files and tables.
#include "common/units.hpp"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/error.hpp"

namespace twinstep {
namespace {

struct UnitDef {
  std::string_view name;
  double factor;
  Dimension dim;
};

// Longest names first is not needed: we match the whole unit string exactly.
constexpr UnitDef kUnits[] = {
    {"s", 1.0, Dimension::kTime},
    {"ms", 1e-3, Dimension::kTime},
    {"us", 1e-6, Dimension::kTime},
    {"ns", 1e-9, Dimension::kTime},
    {"B", 1.0, Dimension::kBytes},
    {"kB", 1e3, Dimension::kBytes},
    {"KB", 1e3, Dimension::kBytes},
    {"MB", 1e6, Dimension::kBytes},
    {"GB", 1e9, Dimension::kBytes},
    {"TB", 1e12, Dimension::kBytes},
    {"KiB", 1024.0, Dimension::kBytes},
    {"MiB", 1048576.0, Dimension::kBytes},
    {"GiB", 1073741824.0, Dimension::kBytes},
    {"TiB", 1099511627776.0, Dimension::kBytes},
    {"B/s", 1.0, Dimension::kBandwidth},
    {"kB/s", 1e3, Dimension::kBandwidth},
    {"MB/s", 1e6, Dimension::kBandwidth},
    {"GB/s", 1e9, Dimension::kBandwidth},
    {"TB/s", 1e12, Dimension::kBandwidth},
    {"GiB/s", 1073741824.0, Dimension::kBandwidth},
    {"Mb/s", 1e6 / 8, Dimension::kBandwidth},
    {"Gb/s", 1e9 / 8, Dimension::kBandwidth},
    {"Gbit/s", 1e9 / 8, Dimension::kBandwidth},
    {"Tb/s", 1e12 / 8, Dimension::kBandwidth},
    {"FLOP/s", 1.0, Dimension::kFlopRate},
    {"GFLOP/s", 1e9, Dimension::kFlopRate},
    {"TFLOP/s", 1e12, Dimension::kFlopRate},
    {"PFLOP/s", 1e15, Dimension::kFlopRate},
    {"Hz", 1.0, Dimension::kFrequency},
    {"MHz", 1e6, Dimension::kFrequency},
    {"GHz", 1e9, Dimension::kFrequency},
};

const char* dimension_name(Dimension dim) {
  switch (dim) {
    case Dimension::kTime:
      return "a time (e.g. \"1.5 us\")";
    case Dimension::kBytes:
      return "a size (e.g. \"80 GiB\")";
    case Dimension::kBandwidth:
      return "a bandwidth (e.g. \"450 GB/s\")";
    case Dimension::kFlopRate:
      return "a FLOP rate (e.g. \"989 TFLOP/s\")";
    case Dimension::kFrequency:
      return "a frequency (e.g. \"1.98 GHz\")";
    case Dimension::kDimensionless:
      return "a number";
  }
  return "a quantity";
}

}  // namespace

double parse_quantity(std::string_view text, Dimension dim, std::string_view what) {
  std::string s(text);
  const char* begin = s.c_str();
  char* end = nullptr;
  const double value = std::strtod(begin, &end);
  auto fail = [&](const std::string& why) -> double {
    throw Error(std::string(what) + ": cannot read \"" + s + "\" as " + dimension_name(dim) + ": " + why);
  };
  if (end == begin) return fail("no number");
  if (!std::isfinite(value)) return fail("not a finite number");
  std::string unit(end);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(unit.begin());
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  if (unit.empty()) return value;  // a bare number is SI already
  for (const auto& u : kUnits) {
    if (u.name == unit) {
      if (u.dim != dim) return fail("unit \"" + unit + "\" has the wrong dimension");
      return value * u.factor;
    }
  }
  return fail("unknown unit \"" + unit + "\"");
}

Nanos to_nanos(double seconds) { return static_cast<Nanos>(std::llround(seconds * 1e9)); }

std::string format_seconds(double seconds) {
  char buf[64];
  const double a = std::fabs(seconds);
  if (a >= 1.0) {
    std::snprintf(buf, sizeof buf, "%.3f s", seconds);
  } else if (a >= 1e-3) {
    std::snprintf(buf, sizeof buf, "%.3f ms", seconds * 1e3);
  } else if (a >= 1e-6) {
    std::snprintf(buf, sizeof buf, "%.3f us", seconds * 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f ns", seconds * 1e9);
  }
  return buf;
}

std::string format_bytes(double bytes) {
  static constexpr const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (std::fabs(bytes) >= 1024.0 && i < 5) {
    bytes /= 1024.0;
    ++i;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f %s" : "%.2f %s", bytes, kNames[i]);
  return buf;
}

}  // namespace twinstep
