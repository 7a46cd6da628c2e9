// The GPU monitor's samples as a time series (issues 19/21: the H100's power-cap governor acts within a step, on a
// window shorter than the blocks of the power-mix schedules, so a per-run median hides it). Each sample keeps its
// steady_clock time and the measured step it fell in; `twinstep run --monitor-series FILE` gathers every rank's series
// and rank 0 writes it as CSV (format in docs/calibration.md 8.1 and write_series_csv below). Pure host code: the
// encoding, the interval parsing and the file writer run and are tested without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace twinstep::backend {

/// The environment variable that sets the monitor's sampling interval in ms, and its accepted range.
inline constexpr const char* kMonitorIntervalEnv = "TWINSTEP_GPU_MONITOR_INTERVAL_MS";
inline constexpr double kMonitorIntervalDefaultMs = 5.0;
inline constexpr double kMonitorIntervalMinMs = 0.1;
inline constexpr double kMonitorIntervalMaxMs = 1000.0;

/// The most samples one monitor keeps per run (8 MiB of samples; 22 minutes of measured steps at 5 ms, 4.4 at 1 ms).
/// Later samples are counted (GpuSeries::dropped, trace context "gpu_monitor.samples_dropped") but not kept.
inline constexpr std::size_t kMonitorMaxSamples = std::size_t{1} << 18;

/// The interval `value` of kMonitorIntervalEnv asks for; the default when null or empty. Throws Error naming the
/// variable and the range for anything else than a number in [kMonitorIntervalMinMs, kMonitorIntervalMaxMs].
[[nodiscard]] double parse_monitor_interval_ms(const char* value);
/// parse_monitor_interval_ms() of the environment's kMonitorIntervalEnv.
[[nodiscard]] double monitor_interval_ms_from_env();

/// One sample of the series: the time relative to this rank's first measured step's host origin (the steady_clock
/// instant the trace's host times of that step count from), the measured step (0-based) and the time relative to
/// that step's own host origin (the axis of the trace's issue_ns for that step).
struct SeriesSample {
  std::int64_t t_ns = 0;
  std::int32_t step = 0;
  std::int64_t t_step_ns = 0;
  double sm_clock_mhz = 0;
  double power_w = 0;
  std::uint64_t event_reasons = 0;

  bool operator==(const SeriesSample&) const = default;
};

/// One rank's series.
struct GpuSeries {
  std::string unavailable;    ///< Why the rank has no samples (as GpuMonitorReport::unavailable); empty when sampled.
  std::string power_source;   ///< "instant" or "average" (GpuMonitorReport::power_source).
  double interval_ms = 0;     ///< The sampling interval asked for.
  std::uint64_t dropped = 0;  ///< Samples past kMonitorMaxSamples, not kept.
  std::vector<SeriesSample> samples;

  bool operator==(const GpuSeries&) const = default;
};

/// Text holding `series` for the gathering of all ranks; decode_series() reads it back exactly. Throws Error on text
/// encode_series() did not write.
[[nodiscard]] std::string encode_series(const GpuSeries& series);
[[nodiscard]] GpuSeries decode_series(const std::string& text);

/// The gathered texts' shared parsing (decode_report, decode_series): the reason after `prefix` when `text` starts
/// with it ("no reason given" when empty), else nothing; and `line` split at every `sep`.
[[nodiscard]] std::optional<std::string> unavailable_after(const std::string& text, const std::string& prefix);
[[nodiscard]] std::vector<std::string> split_fields(const std::string& line, char sep);

/// Checks, before a run, that `path` can be written (creates and removes its temporary sibling); throws Error naming
/// `flag` and `path` when it cannot.
void check_series_path(const std::string& path, const std::string& flag);

/// Writes every rank's series (in rank order) to `path` as CSV, atomically: a temporary file in the same folder,
/// renamed over `path` once complete. Lines starting with '#' describe the run (interval, power source, per-rank
/// sample and dropped counts, the time origin); then the header
/// `rank,step,t_ns,t_step_ns,sm_clock_mhz,power_w,event_reasons` and one line per sample (event_reasons decimal).
/// Throws Error naming `flag` and `path` when it cannot write.
void write_series_csv(const std::vector<GpuSeries>& per_rank, const std::string& path, const std::string& flag);

}  // namespace twinstep::backend
