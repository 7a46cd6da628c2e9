// The GPU monitor without a GPU: the statistics of a sample list (median, min, max, mean power, power-cap share),
// the per-rank report's text round trip used to gather it, the trace context keys it becomes, and a monitor whose
// NVML library cannot be loaded (it says why and never throws).
#include "backend/gpu_monitor.hpp"

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;

TEST_CASE("backend::summarize_samples: median, extremes, mean power and the SW power cap share", "[backend]") {
  CHECK(be::summarize_samples({}) == be::GpuSampleStats{});

  // Odd count: the middle value of the sorted clocks; 0x4 set in 2 of 5 samples (alone and with 0x1).
  const std::vector<be::GpuSample> odd = {
      {1980, 400, 0x0}, {1500, 700, 0x4}, {1710, 620, 0x1}, {1605, 690, 0x5}, {1755, 610, 0x0}};
  const auto s = be::summarize_samples(odd);
  CHECK(s.samples == 5);
  CHECK(s.sm_clock_median_mhz == 1710);
  CHECK(s.sm_clock_min_mhz == 1500);
  CHECK(s.sm_clock_max_mhz == 1980);
  CHECK(s.power_mean_w == Approx((400.0 + 700 + 620 + 690 + 610) / 5));
  CHECK(s.power_cap_fraction == Approx(0.4));
  CHECK(s.reasons_seen == 0x5);

  // Even count: the mean of the two middle values.
  const std::vector<be::GpuSample> even = {{1500, 700, 0x4}, {1980, 300, 0}, {1600, 690, 0x4}, {1700, 650, 0x4}};
  const auto e = be::summarize_samples(even);
  CHECK(e.sm_clock_median_mhz == 1650);
  CHECK(e.power_cap_fraction == Approx(0.75));
  CHECK(e.reasons_seen == 0x4);
}

TEST_CASE("backend::encode_report: a report survives the text round trip exactly, garbage is refused", "[backend]") {
  be::GpuMonitorReport r;
  r.power_source = "instant";
  r.power_limit_w = 700;
  r.sample_interval_ms = 5;
  r.stats = be::summarize_samples({{1732.5, 612.345678901, 0x4}, {1515, 1.0 / 3.0, 0x24}});
  CHECK(be::decode_report(be::encode_report(r)) == r);
  r.samples_dropped = 12345;
  CHECK(be::decode_report(be::encode_report(r)) == r);

  be::GpuMonitorReport u;
  u.unavailable = "dlopen(\"libnvidia-ml.so.1\") failed: a|b";  // a '|' inside the reason survives too
  CHECK(be::decode_report(be::encode_report(u)) == u);

  CHECK_THROWS_AS(be::decode_report("ok|instant|700"), twinstep::Error);
  CHECK_THROWS_AS(be::decode_report("ok|instant|x|5|2|1|1|1|1|0|0"), twinstep::Error);
  CHECK_THROWS_AS(be::decode_report(""), twinstep::Error);
}

TEST_CASE("backend::write_monitor_context: per-rank values in rank order, or why nothing was sampled", "[backend]") {
  be::GpuMonitorReport a;
  a.power_source = "instant";
  a.power_limit_w = 700;
  a.sample_interval_ms = 5;
  a.stats = be::summarize_samples({{1710, 620, 0x4}, {1755, 630, 0}, {1740, 600, 0}});
  be::GpuMonitorReport b = a;
  b.stats = be::summarize_samples({{1515, 699.5, 0x4}, {1500, 700, 0x4 | 0x20}});

  std::map<std::string, std::string> ctx{{"gpu", "NVIDIA H200"}};
  be::write_monitor_context({a, b}, ctx);
  CHECK(ctx.at("gpu") == "NVIDIA H200");
  CHECK_THAT(ctx.at("gpu_monitor"), twinstep_contains("nvml:"));
  CHECK_THAT(ctx.at("gpu_monitor"), twinstep_contains("every 5 ms"));
  CHECK(ctx.at("gpu_monitor.sm_clock_mhz.median") == "1740,1507.5");
  CHECK(ctx.at("gpu_monitor.sm_clock_mhz.min") == "1710,1500");
  CHECK(ctx.at("gpu_monitor.sm_clock_mhz.max") == "1755,1515");
  CHECK(ctx.at("gpu_monitor.power_w_mean") == "616.667,699.75");
  CHECK(ctx.at("gpu_monitor.power_cap_fraction") == "0.333333,1");
  CHECK(ctx.at("gpu_monitor.power_limit_w") == "700,700");
  CHECK(ctx.at("gpu_monitor.samples") == "3,2");
  CHECK(ctx.at("gpu_monitor.clock_event_reasons") == "0x24");
  CHECK(ctx.count("gpu_monitor.samples_dropped") == 0);  // only where a rank hit the cap
  b.samples_dropped = 7;
  be::write_monitor_context({a, b}, ctx);
  CHECK(ctx.at("gpu_monitor.samples_dropped") == "0,7");

  // One rank without NVML: the status names it and no figures are written.
  be::GpuMonitorReport none;
  none.unavailable = "nvmlInit_v2 returned 9";
  std::map<std::string, std::string> ctx2;
  be::write_monitor_context({a, none}, ctx2);
  CHECK(ctx2.size() == 1);
  CHECK(ctx2.at("gpu_monitor") == "unavailable: nvmlInit_v2 returned 9 (rank 1)");
}

TEST_CASE("backend::GpuMonitor: a library that cannot be loaded leaves it unavailable with the reason", "[backend]") {
  be::GpuMonitor m(0, "libtwinstep-no-such-nvml.so.1");
  CHECK_FALSE(m.available());
  m.start();  // no thread, no throw
  m.record(true);
  const auto r = m.stop();
  CHECK_THAT(r.unavailable, twinstep_contains("dlopen(\"libtwinstep-no-such-nvml.so.1\") failed"));
  CHECK(r.stats.samples == 0);
  std::map<std::string, std::string> ctx;
  be::write_monitor_context({r}, ctx);
  CHECK_THAT(ctx.at("gpu_monitor"), twinstep_contains("unavailable: dlopen"));
}

TEST_CASE("backend::GpuMonitor: TWINSTEP_GPU_MONITOR=0 turns it off before NVML is loaded", "[backend]") {
  setenv("TWINSTEP_GPU_MONITOR", "0", 1);
  be::GpuMonitor m(0);
  unsetenv("TWINSTEP_GPU_MONITOR");
  CHECK_FALSE(m.available());
  CHECK(m.stop().unavailable == "disabled by TWINSTEP_GPU_MONITOR=0");
}

TEST_CASE("backend::GpuMonitor: TWINSTEP_GPU_MONITOR_INTERVAL_MS out of range is refused, a valid one accepted",
          "[backend]") {
  setenv("TWINSTEP_GPU_MONITOR_INTERVAL_MS", "0", 1);
  CHECK_THROWS_WITH(be::GpuMonitor(0, "libtwinstep-no-such-nvml.so.1"),
                    twinstep_contains("TWINSTEP_GPU_MONITOR_INTERVAL_MS=\"0\"") && twinstep_contains("[0.1, 1000]"));
  setenv("TWINSTEP_GPU_MONITOR_INTERVAL_MS", "2", 1);
  const be::GpuMonitor m(0, "libtwinstep-no-such-nvml.so.1");
  unsetenv("TWINSTEP_GPU_MONITOR_INTERVAL_MS");
  CHECK_FALSE(m.available());
}
