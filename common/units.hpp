// Quantities with units in input files ("900 GB/s", "1.5 us", "80 GiB", "989 TFLOP/s") parsed to SI doubles.
// In C++ every quantity is an SI double or an integer whose name carries the unit (bw_bytes_per_s, latency_s).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace twinstep {

using Nanos = std::int64_t;  ///< Simulated or measured time, integer nanoseconds.

/// Binary byte multiples (an integer: in a double expression it converts exactly).
inline constexpr std::uint64_t kKiB = 1024;
inline constexpr std::uint64_t kMiB = 1024 * kKiB;
inline constexpr std::uint64_t kGiB = 1024 * kMiB;

/// The dimension a quantity must have; parse_quantity rejects a string of another dimension.
enum class Dimension { kTime, kBytes, kBandwidth, kFlopRate, kFrequency, kDimensionless };

/// Parses "1.5 us" / "900 GB/s" / "80 GiB" / "989e12" (a bare number is already SI) into SI units:
/// seconds, bytes, bytes/s, FLOP/s, Hz. Decimal prefixes (k M G T P) are powers of 1000, binary ones (Ki Mi Gi Ti)
/// powers of 1024; bits ("Gb/s", "Gbit/s") are divided by 8. Throws twinstep::Error naming `what` on bad input.
[[nodiscard]] double parse_quantity(std::string_view text, Dimension dim, std::string_view what);

[[nodiscard]] constexpr double to_seconds(Nanos ns) { return static_cast<double>(ns) * 1e-9; }
/// Rounds to the nearest nanosecond.
[[nodiscard]] Nanos to_nanos(double seconds);

/// "1.50 ms", "3.2 us", "12.0 s": a short human-readable time for tables.
[[nodiscard]] std::string format_seconds(double seconds);
/// "256 MiB", "1.5 KiB": binary prefixes.
[[nodiscard]] std::string format_bytes(double bytes);

}  // namespace twinstep
