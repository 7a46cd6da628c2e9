// NVML through dlopen, with the few entry points and constants declared here from the NVML API reference
// (docs.nvidia.com/deploy/nvml-api): every function returns nvmlReturn_t (0 = NVML_SUCCESS), nvmlDevice_t is an
// opaque pointer, NVML_CLOCK_SM = 1, power in milliwatts, field NVML_FI_DEV_POWER_INSTANT = 186.
#include "backend/gpu_monitor.hpp"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "common/error.hpp"
#include "common/stats.hpp"

namespace twinstep::backend {

namespace {

using NvmlReturn = int;
using NvmlDevice = void*;
constexpr NvmlReturn kNvmlSuccess = 0;
constexpr int kNvmlClockSm = 1;
constexpr unsigned kNvmlFieldPowerInstant = 186;
// nvmlValueType_t
constexpr int kValueDouble = 0, kValueUInt = 1, kValueULong = 2, kValueULongLong = 3, kValueSLongLong = 4,
              kValueSInt = 5;

// nvmlFieldValue_t as the API reference lists its members.
struct NvmlFieldValue {
  unsigned int field_id;
  unsigned int scope_id;
  long long timestamp_us;
  long long latency_us;
  int value_type;
  NvmlReturn nvml_return;
  union {
    double d;
    unsigned int ui;
    unsigned long ul;
    unsigned long long ull;
    long long sll;
    int si;
  } value;
};

double field_number(const NvmlFieldValue& f) {
  switch (f.value_type) {
    case kValueDouble:
      return f.value.d;
    case kValueUInt:
      return static_cast<double>(f.value.ui);
    case kValueULong:
      return static_cast<double>(f.value.ul);
    case kValueULongLong:
      return static_cast<double>(f.value.ull);
    case kValueSLongLong:
      return static_cast<double>(f.value.sll);
    case kValueSInt:
      return static_cast<double>(f.value.si);
    default:
      return -1;
  }
}

std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

GpuSampleStats summarize_samples(const std::vector<GpuSample>& samples) {
  GpuSampleStats s;
  s.samples = samples.size();
  if (samples.empty()) return s;
  std::vector<double> clocks;
  clocks.reserve(samples.size());
  double power = 0;
  std::size_t capped = 0;
  for (const auto& x : samples) {
    clocks.push_back(x.sm_clock_mhz);
    power += x.power_w;
    if ((x.event_reasons & kClockEventSwPowerCap) != 0) ++capped;
    s.reasons_seen |= x.event_reasons;
  }
  const std::size_t n = clocks.size();
  s.sm_clock_median_mhz = median(clocks);
  s.sm_clock_min_mhz = *std::min_element(clocks.begin(), clocks.end());
  s.sm_clock_max_mhz = *std::max_element(clocks.begin(), clocks.end());
  s.power_mean_w = power / static_cast<double>(n);
  s.power_cap_fraction = static_cast<double>(capped) / static_cast<double>(n);
  return s;
}

std::string encode_report(const GpuMonitorReport& r) {
  if (!r.unavailable.empty()) return "unavailable|" + r.unavailable;
  const auto& s = r.stats;
  return "ok|" + r.power_source + "|" + exact(r.power_limit_w) + "|" + exact(r.sample_interval_ms) + "|" +
         std::to_string(s.samples) + "|" + exact(s.sm_clock_median_mhz) + "|" + exact(s.sm_clock_min_mhz) + "|" +
         exact(s.sm_clock_max_mhz) + "|" + exact(s.power_mean_w) + "|" + exact(s.power_cap_fraction) + "|" +
         std::to_string(s.reasons_seen) + "|" + std::to_string(r.samples_dropped);
}

GpuMonitorReport decode_report(const std::string& text) {
  GpuMonitorReport r;
  if (auto why = unavailable_after(text, "unavailable|")) {
    r.unavailable = *why;
    return r;
  }
  const std::vector<std::string> f = split_fields(text, '|');
  if (f.size() != 12 || f[0] != "ok") {
    throw Error("gpu monitor: malformed report \"" + text + "\" (a backend of another revision on some rank?)");
  }
  auto num = [&](std::size_t i) {
    char* end = nullptr;
    const double v = std::strtod(f[i].c_str(), &end);
    if (f[i].empty() || end == nullptr || *end != '\0')
      throw Error("gpu monitor: bad number in report \"" + text + "\"");
    return v;
  };
  r.power_source = f[1];
  r.power_limit_w = num(2);
  r.sample_interval_ms = num(3);
  r.stats.samples = static_cast<std::size_t>(num(4));
  r.stats.sm_clock_median_mhz = num(5);
  r.stats.sm_clock_min_mhz = num(6);
  r.stats.sm_clock_max_mhz = num(7);
  r.stats.power_mean_w = num(8);
  r.stats.power_cap_fraction = num(9);
  r.stats.reasons_seen = std::strtoull(f[10].c_str(), nullptr, 10);
  r.samples_dropped = std::strtoull(f[11].c_str(), nullptr, 10);
  return r;
}

void write_monitor_context(const std::vector<GpuMonitorReport>& per_rank, std::map<std::string, std::string>& ctx) {
  const std::string key = kGpuMonitorKey;
  for (std::size_t r = 0; r < per_rank.size(); ++r) {
    if (!per_rank[r].unavailable.empty()) {
      ctx[key] = "unavailable: " + per_rank[r].unavailable + " (rank " + std::to_string(r) + ")";
      return;
    }
  }
  if (per_rank.empty()) {
    ctx[key] = "unavailable: no rank reported";
    return;
  }
  const auto& first = per_rank.front();
  ctx[key] = "nvml: SM clock, board power (" + first.power_source + ") and clock event reasons sampled every " +
             number(first.sample_interval_ms) +
             " ms during the measured steps' GPU work; per-rank values in rank order";
  auto join = [&](auto get) {
    std::string out;
    for (const auto& r : per_rank) out += (out.empty() ? "" : ",") + number(get(r));
    return out;
  };
  ctx[key + ".sm_clock_mhz.median"] = join([](const GpuMonitorReport& r) { return r.stats.sm_clock_median_mhz; });
  ctx[key + ".sm_clock_mhz.min"] = join([](const GpuMonitorReport& r) { return r.stats.sm_clock_min_mhz; });
  ctx[key + ".sm_clock_mhz.max"] = join([](const GpuMonitorReport& r) { return r.stats.sm_clock_max_mhz; });
  ctx[key + ".power_w_mean"] = join([](const GpuMonitorReport& r) { return r.stats.power_mean_w; });
  ctx[key + ".power_cap_fraction"] = join([](const GpuMonitorReport& r) { return r.stats.power_cap_fraction; });
  ctx[key + ".power_limit_w"] = join([](const GpuMonitorReport& r) { return r.power_limit_w; });
  ctx[key + ".samples"] = join([](const GpuMonitorReport& r) { return static_cast<double>(r.stats.samples); });
  std::uint64_t reasons = 0;
  for (const auto& r : per_rank) reasons |= r.stats.reasons_seen;
  char hex[24];
  std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(reasons));
  ctx[key + ".clock_event_reasons"] = hex;
  bool dropped = false;
  for (const auto& r : per_rank) dropped = dropped || r.samples_dropped > 0;
  if (dropped) {
    ctx[key + ".samples_dropped"] =
        join([](const GpuMonitorReport& r) { return static_cast<double>(r.samples_dropped); });
  }
}

struct GpuMonitor::Nvml {
  void* lib = nullptr;
  NvmlDevice device = nullptr;
  bool initialized = false;
  bool instant_power = false;
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*by_pci_bus_id)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*clock_info)(NvmlDevice, int, unsigned int*) = nullptr;
  NvmlReturn (*power_usage)(NvmlDevice, unsigned int*) = nullptr;
  NvmlReturn (*event_reasons)(NvmlDevice, unsigned long long*) = nullptr;
  NvmlReturn (*field_values)(NvmlDevice, int, NvmlFieldValue*) = nullptr;
  NvmlReturn (*power_limit)(NvmlDevice, unsigned int*) = nullptr;
  const char* (*error_string)(NvmlReturn) = nullptr;

  ~Nvml() {
    if (initialized && shutdown != nullptr) shutdown();
    if (lib != nullptr) dlclose(lib);
  }

  template <class F>
  bool bind(F& fn, const char* name) {
    fn = reinterpret_cast<F>(dlsym(lib, name));
    return fn != nullptr;
  }

  std::string why(const char* call, NvmlReturn rc) const {
    const char* text = error_string != nullptr ? error_string(rc) : nullptr;
    return std::string(call) + " returned " + std::to_string(rc) +
           (text != nullptr ? std::string(" (") + text + ")" : "");
  }

  /// Instantaneous board power in W, or a negative value when the field cannot be read.
  double instant_w() const {
    NvmlFieldValue f{};
    f.field_id = kNvmlFieldPowerInstant;
    if (field_values(device, 1, &f) != kNvmlSuccess || f.nvml_return != kNvmlSuccess) return -1;
    const double mw = field_number(f);
    return mw > 0 ? mw * 1e-3 : -1;
  }
};

GpuMonitor::GpuMonitor(int cuda_device, const char* library, double sample_interval_ms)
    : interval_ms_(sample_interval_ms > 0 ? sample_interval_ms : monitor_interval_ms_from_env()) {
  if (const char* env = std::getenv("TWINSTEP_GPU_MONITOR"); env != nullptr && std::string(env) == "0") {
    unavailable_ = "disabled by TWINSTEP_GPU_MONITOR=0";
    return;
  }
  auto nv = std::make_unique<Nvml>();
  nv->lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (nv->lib == nullptr) {
    const char* e = dlerror();
    unavailable_ = std::string("dlopen(\"") + library + "\") failed: " + (e != nullptr ? e : "no error text");
    return;
  }
  nv->bind(nv->error_string, "nvmlErrorString");
  const bool bound = nv->bind(nv->init, "nvmlInit_v2") && nv->bind(nv->shutdown, "nvmlShutdown") &&
                     nv->bind(nv->by_pci_bus_id, "nvmlDeviceGetHandleByPciBusId_v2") &&
                     nv->bind(nv->clock_info, "nvmlDeviceGetClockInfo") &&
                     nv->bind(nv->power_usage, "nvmlDeviceGetPowerUsage") &&
                     (nv->bind(nv->event_reasons, "nvmlDeviceGetCurrentClocksEventReasons") ||
                      nv->bind(nv->event_reasons, "nvmlDeviceGetCurrentClocksThrottleReasons"));
  if (!bound) {
    unavailable_ = std::string(library) + " lacks an NVML entry point the monitor needs (driver too old?)";
    return;
  }
  nv->bind(nv->field_values, "nvmlDeviceGetFieldValues");
  nv->bind(nv->power_limit, "nvmlDeviceGetEnforcedPowerLimit");
  if (const NvmlReturn rc = nv->init(); rc != kNvmlSuccess) {
    unavailable_ = nv->why("nvmlInit_v2", rc);
    return;
  }
  nv->initialized = true;
  char bus_id[64] = {};
  if (cudaDeviceGetPCIBusId(bus_id, static_cast<int>(sizeof bus_id), cuda_device) != cudaSuccess) {
    unavailable_ = "cudaDeviceGetPCIBusId failed for CUDA device " + std::to_string(cuda_device);
    return;
  }
  if (const NvmlReturn rc = nv->by_pci_bus_id(bus_id, &nv->device); rc != kNvmlSuccess) {
    unavailable_ = nv->why("nvmlDeviceGetHandleByPciBusId_v2", rc) + " for PCI bus id " + bus_id;
    return;
  }
  unsigned int mhz = 0;
  if (const NvmlReturn rc = nv->clock_info(nv->device, kNvmlClockSm, &mhz); rc != kNvmlSuccess) {
    unavailable_ = nv->why("nvmlDeviceGetClockInfo(NVML_CLOCK_SM)", rc);
    return;
  }
  nv->instant_power = nv->field_values != nullptr && nv->instant_w() > 0;
  nvml_ = std::move(nv);
}

GpuMonitor::~GpuMonitor() {
  if (running_.load()) (void)stop();
}

void GpuMonitor::start() {
  if (!available() || running_.load()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    samples_.clear();
    dropped_ = 0;
    step_origins_.clear();
  }
  step_.store(0);
  recording_.store(false);
  running_.store(true);
  thread_ = std::thread([this]() { loop(); });
}

void GpuMonitor::loop() {
  const auto period = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double, std::milli>(interval_ms_));
  auto next = std::chrono::steady_clock::now();
  const Nvml& nv = *nvml_;
  while (running_.load(std::memory_order_relaxed)) {
    if (recording_.load(std::memory_order_relaxed)) {
      GpuSample s;
      const auto t0 = std::chrono::steady_clock::now();
      s.step = step_.load(std::memory_order_relaxed);
      unsigned int mhz = 0, mw = 0;
      unsigned long long reasons = 0;
      bool ok = nv.clock_info(nv.device, kNvmlClockSm, &mhz) == kNvmlSuccess;
      s.sm_clock_mhz = mhz;
      s.power_w = nv.instant_power ? nv.instant_w() : -1;
      if (s.power_w < 0) {
        ok = ok && nv.power_usage(nv.device, &mw) == kNvmlSuccess;
        s.power_w = mw * 1e-3;
      }
      if (nv.event_reasons(nv.device, &reasons) == kNvmlSuccess) s.event_reasons = reasons;
      const auto t1 = std::chrono::steady_clock::now();
      s.t_ns = std::chrono::duration_cast<std::chrono::nanoseconds>((t0 + (t1 - t0) / 2).time_since_epoch()).count();
      if (ok) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (samples_.size() < kMonitorMaxSamples) {
          samples_.push_back(s);
        } else {
          ++dropped_;
        }
      }
    }
    next += period;
    if (const auto now = std::chrono::steady_clock::now(); next < now) next = now;  // fell behind: no burst
    std::this_thread::sleep_until(next);
  }
}

GpuMonitorReport GpuMonitor::stop() {
  GpuMonitorReport r;
  if (!available()) {
    r.unavailable = unavailable_;
    return r;
  }
  running_.store(false);
  if (thread_.joinable()) thread_.join();
  recording_.store(false);
  r.power_source = nvml_->instant_power ? "instant" : "average";
  r.sample_interval_ms = interval_ms_;
  unsigned int limit_mw = 0;
  if (nvml_->power_limit != nullptr && nvml_->power_limit(nvml_->device, &limit_mw) == kNvmlSuccess) {
    r.power_limit_w = limit_mw * 1e-3;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  r.stats = summarize_samples(samples_);
  r.samples_dropped = dropped_;
  return r;
}

void GpuMonitor::begin_step(std::chrono::steady_clock::time_point origin) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_origins_.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(origin.time_since_epoch()).count());
  step_.store(static_cast<std::int32_t>(step_origins_.size() - 1), std::memory_order_relaxed);
}

GpuSeries GpuMonitor::series() {
  GpuSeries out;
  if (!available()) {
    out.unavailable = unavailable_;
    return out;
  }
  out.power_source = nvml_->instant_power ? "instant" : "average";
  out.interval_ms = interval_ms_;
  std::lock_guard<std::mutex> lock(mutex_);
  out.dropped = dropped_;
  out.samples.reserve(samples_.size());
  for (const auto& x : samples_) {
    const auto k = static_cast<std::size_t>(x.step);
    if (k >= step_origins_.size()) continue;  // recorded without begin_step: no origin to align it with
    out.samples.push_back({x.t_ns - step_origins_.front(), x.step, x.t_ns - step_origins_[k], x.sm_clock_mhz, x.power_w,
                           x.event_reasons});
  }
  return out;
}

}  // namespace twinstep::backend
