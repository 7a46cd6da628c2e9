// The GPU's SM clock, board power and clock event reasons, sampled by a background thread while the measured steps
// of a run execute. The clock a kernel runs at depends on the power the workload draws (the board power cap lowers
// it), so every measured duration is tied to the clock held while it was measured; the executor records these
// figures in the trace's context and the calibration suite in each raw group line.
//
// NVML is loaded at run time (dlopen of libnvidia-ml.so.1, the driver's library): no NVML header or link-time
// dependency. Where NVML cannot be loaded or the GPU cannot be found, the report says why and the run goes on.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/monitor_series.hpp"

namespace twinstep::backend {

/// Every trace context key the monitor writes starts with this; the calibration suite copies those keys into its
/// raw group lines by this prefix (calibration/suite.cpp does not include backend headers and repeats the literal).
inline constexpr const char* kGpuMonitorKey = "gpu_monitor";

/// NVML's clock event reason bit "SW power cap" (nvmlClocksEventReasonSwPowerCap, 0x4 in the NVML API reference):
/// the driver lowered the clocks to hold the board's power limit.
inline constexpr std::uint64_t kClockEventSwPowerCap = 0x4;

/// One reading of the GPU.
struct GpuSample {
  double sm_clock_mhz = 0;
  double power_w = 0;
  std::uint64_t event_reasons = 0;  ///< NVML clock event (throttle) reason bits at the sample.
  std::int64_t t_ns = 0;            ///< steady_clock at the sample (ns since its epoch): the midpoint of the reads.
  std::int32_t step = 0;            ///< The measured step (0-based) the sample fell in.
};

/// Statistics of the samples of one run on one GPU.
struct GpuSampleStats {
  std::size_t samples = 0;
  double sm_clock_median_mhz = 0;
  double sm_clock_min_mhz = 0;
  double sm_clock_max_mhz = 0;
  double power_mean_w = 0;
  double power_cap_fraction = 0;   ///< Share of samples with kClockEventSwPowerCap set.
  std::uint64_t reasons_seen = 0;  ///< OR of every sample's event reasons.

  bool operator==(const GpuSampleStats&) const = default;
};

/// Median (the mean of the two middle values for an even count), min, max, mean power, cap fraction. Zeros for none.
[[nodiscard]] GpuSampleStats summarize_samples(const std::vector<GpuSample>& samples);

/// What one process's monitor reports for one run.
struct GpuMonitorReport {
  std::string unavailable;   ///< Why nothing was sampled; empty when NVML sampled the GPU.
  std::string power_source;  ///< "instant" (NVML_FI_DEV_POWER_INSTANT) or "average" (nvmlDeviceGetPowerUsage).
  double power_limit_w = 0;  ///< The enforced board power limit (0 when NVML does not say).
  double sample_interval_ms = 0;
  std::uint64_t samples_dropped = 0;  ///< Samples past kMonitorMaxSamples (counted, not kept nor summarized).
  GpuSampleStats stats;

  bool operator==(const GpuMonitorReport&) const = default;
};

/// One line of text holding `report`, for gathering the reports of all ranks; decode_report() reads it back.
[[nodiscard]] std::string encode_report(const GpuMonitorReport& report);
/// Throws Error on text encode_report() did not write.
[[nodiscard]] GpuMonitorReport decode_report(const std::string& text);

/// Writes the reports of all ranks (in rank order) into a trace context as flat string keys under kGpuMonitorKey:
/// "gpu_monitor" = "nvml: ..." or "unavailable: <why> (rank r)"; when every rank sampled, per-rank values joined by
/// "," (one number for one GPU) in "gpu_monitor.sm_clock_mhz.median|min|max", "gpu_monitor.power_w_mean",
/// "gpu_monitor.power_cap_fraction", "gpu_monitor.power_limit_w", "gpu_monitor.samples", and the OR of every rank's
/// event reasons in "gpu_monitor.clock_event_reasons" (hex); "gpu_monitor.samples_dropped" only where a rank kept
/// kMonitorMaxSamples and dropped later ones (the statistics are then of the kept samples, the run's start).
void write_monitor_context(const std::vector<GpuMonitorReport>& per_rank, std::map<std::string, std::string>& context);

/// Samples one CUDA device through NVML. Constructing it loads NVML and finds the device by its PCI bus id (so the
/// right GPU is read under CUDA_VISIBLE_DEVICES); it never throws for NVML's absence or failures. The environment
/// variable TWINSTEP_GPU_MONITOR=0 turns it off (no thread, no NVML call during the run). It keeps at most
/// kMonitorMaxSamples samples per run, each with its time, for the series (monitor_series.hpp).
class GpuMonitor {
 public:
  /// `library`: the NVML shared library to load (tests pass a missing name). `sample_interval_ms` 0: the interval
  /// TWINSTEP_GPU_MONITOR_INTERVAL_MS asks for (monitor_interval_ms_from_env(), which throws Error on a bad value).
  explicit GpuMonitor(int cuda_device, const char* library = "libnvidia-ml.so.1", double sample_interval_ms = 0);
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;

  [[nodiscard]] bool available() const { return unavailable_.empty(); }

  /// Starts the sampling thread with no samples kept; does nothing when unavailable.
  void start();
  /// Keep (true) or drop (false) the samples taken from now on: on during the measured steps' GPU work.
  void record(bool on) { recording_.store(on, std::memory_order_relaxed); }
  /// A measured step begins at `origin` (the step's host origin): the samples from now on belong to it.
  void begin_step(std::chrono::steady_clock::time_point origin);
  /// Stops the thread and summarizes the kept samples.
  [[nodiscard]] GpuMonitorReport stop();
  /// The samples kept by the last run, relative to its step origins (begin_step); call after stop().
  [[nodiscard]] GpuSeries series();

  struct Nvml;

 private:
  void loop();

  std::unique_ptr<Nvml> nvml_;
  std::string unavailable_;
  double interval_ms_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  std::atomic<bool> recording_{false};
  std::atomic<std::int32_t> step_{0};
  std::mutex mutex_;  // guards samples_, dropped_ and step_origins_
  std::vector<GpuSample> samples_;
  std::uint64_t dropped_ = 0;
  std::vector<std::int64_t> step_origins_;  // steady_clock ns per measured step
};

}  // namespace twinstep::backend
