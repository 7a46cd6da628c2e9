// The GPU monitor's series without a GPU: the text round trip used to gather it from every rank, the CSV writer
// (atomic, refusing an unwritable path by the flag and the path), and the sampling interval's parsing.
#include "backend/monitor_series.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace fs = std::filesystem;

namespace {

be::GpuSeries two_steps() {
  be::GpuSeries s;
  s.power_source = "instant";
  s.interval_ms = 1;
  s.dropped = 3;
  s.samples = {{120'000, 0, 120'000, 1980, 612.345678901, 0x0},
               {1'125'000, 0, 1'125'000, 1755, 1.0 / 3.0, 0x4},
               {9'000'500, 1, 250'500, 1515, 699.5, 0x24}};
  return s;
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("backend::encode_series: a series survives the text round trip exactly, garbage is refused", "[backend]") {
  const be::GpuSeries s = two_steps();
  CHECK(be::decode_series(be::encode_series(s)) == s);
  be::GpuSeries empty;
  empty.power_source = "average";
  empty.interval_ms = 5;
  CHECK(be::decode_series(be::encode_series(empty)) == empty);
  be::GpuSeries u;
  u.unavailable = "nvmlInit_v2 returned 9 | and a\nsecond line";
  CHECK(be::decode_series(be::encode_series(u)) == u);

  std::string text = be::encode_series(s);
  CHECK_THROWS_AS(be::decode_series(text.substr(0, text.rfind('\n'))), twinstep::Error);  // a sample line short
  CHECK_THROWS_AS(be::decode_series(text + " 7"), twinstep::Error);                       // a field too many
  CHECK_THROWS_AS(be::decode_series("series|ok|instant|x|0|0"), twinstep::Error);
  CHECK_THROWS_AS(be::decode_series(""), twinstep::Error);
}

TEST_CASE("backend::write_series_csv: CSV of every rank in rank order, written atomically", "[backend]") {
  const fs::path dir = fs::temp_directory_path() / ("twinstep_series_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path out = dir / "series.csv";
  {
    std::ofstream old(out);
    old << "an older file";
  }
  be::GpuSeries none;
  none.unavailable = "disabled by TWINSTEP_GPU_MONITOR=0";
  be::write_series_csv({two_steps(), none}, out.string(), "--monitor-series");
  const std::string text = read_all(out);
  // The header, then rank 0's three samples as written; rank 1 is described, with no sample line.
  CHECK_THAT(text, twinstep_contains("# rank 0: 3 samples every 1 ms, power instant; CAPPED: 3 later samples dropped"));
  CHECK_THAT(text, twinstep_contains("# rank 1: unavailable: disabled by TWINSTEP_GPU_MONITOR=0\n"));
  CHECK_THAT(text, twinstep_contains("\nrank,step,t_ns,t_step_ns,sm_clock_mhz,power_w,event_reasons\n"
                                     "0,0,120000,120000,1980,612.3456789,0\n"
                                     "0,0,1125000,1125000,1755,0.3333333333,4\n"
                                     "0,1,9000500,250500,1515,699.5,36\n"));
  CHECK(text.find("an older file") == std::string::npos);
  CHECK(text.substr(text.size() - 1) == "\n");
  // Nothing but the file itself is left in the folder (the temporary sibling was renamed over it).
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  CHECK(entries == 1);

  // A path in a folder that does not exist: refused before (check) and at the write, naming the flag and the path;
  // a failed write leaves an existing file as it was.
  const std::string bad = (dir / "no_such_dir" / "s.csv").string();
  CHECK_THROWS_WITH(be::check_series_path(bad, "--monitor-series"),
                    twinstep_contains("--monitor-series " + bad + ": cannot write the monitor series"));
  CHECK_THROWS_WITH(be::write_series_csv({two_steps()}, bad, "--monitor-series"),
                    twinstep_contains("--monitor-series " + bad + ": cannot write"));
  CHECK_NOTHROW(be::check_series_path(out.string(), "--monitor-series"));
  CHECK(read_all(out) == text);
  // A folder in the way of the rename: refused, the temporary file removed.
  const fs::path blocked = dir / "a_folder";
  fs::create_directories(blocked / "inside");
  CHECK_THROWS_WITH(be::write_series_csv({two_steps()}, blocked.string(), "--monitor-series"),
                    twinstep_contains("renaming"));
  entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  CHECK(entries == 2);
  fs::remove_all(dir);
}

TEST_CASE("backend::parse_monitor_interval_ms: default 5 ms, a number of ms in [0.1, 1000], else an error naming it",
          "[backend]") {
  CHECK(be::parse_monitor_interval_ms(nullptr) == 5.0);
  CHECK(be::parse_monitor_interval_ms("") == 5.0);
  CHECK(be::parse_monitor_interval_ms("1") == 1.0);
  CHECK(be::parse_monitor_interval_ms("0.1") == 0.1);
  CHECK(be::parse_monitor_interval_ms("1000") == 1000.0);
  CHECK(be::parse_monitor_interval_ms("2.5") == 2.5);
  for (const char* bad : {"0", "0.05", "1001", "-1", "1ms", "abc", "nan", "inf", "1e9"}) {
    INFO(bad);
    CHECK_THROWS_WITH(be::parse_monitor_interval_ms(bad),
                      twinstep_contains(std::string("TWINSTEP_GPU_MONITOR_INTERVAL_MS=\"") + bad + "\"") &&
                          twinstep_contains("in [0.1, 1000]"));
  }
}
