// Perfetto export: valid JSON (checked with nlohmann), one process per rank, a host track and a track per
// stream, X events in microseconds with op args.
#include "schedule/perfetto.hpp"

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "tests/catch.hpp"
#include "tests/schedule/samples.hpp"

namespace ts = twinstep::schedule;

TEST_CASE("schedule::to_perfetto_json: a process per rank, host and stream tracks, X events in us", "[schedule]") {
  ts::Trace t;
  t.producer = "sim";
  t.context = {{"gpu", "H100 \"SXM\""}};
  t.schedule = ts::testing::every_kind();
  for (const auto& op : t.schedule.ops) {
    t.records.push_back({op.id, op.rank, op.id * 1000, op.id * 1000 + 1234, op.id * 1000 + 2000});
  }
  const auto j = nlohmann::json::parse(ts::to_perfetto_json(t));
  std::map<int, std::string> processes;
  std::set<std::pair<int, std::string>> threads;
  int x_events = 0;
  for (const auto& e : j.at("traceEvents")) {
    if (e.at("ph") == "M" && e.at("name") == "process_name")
      processes[e.at("pid").get<int>()] = e.at("args").at("name").get<std::string>();
    if (e.at("ph") == "M" && e.at("name") == "thread_name")
      threads.insert({e.at("pid").get<int>(), e.at("args").at("name").get<std::string>()});
    if (e.at("ph") == "X") {
      ++x_events;
      const auto id = e.at("args").at("op").get<ts::OpId>();
      CHECK(e.at("ts").get<double>() == Approx(id * 1.0 + 1.234));
      CHECK(e.at("dur").get<double>() == Approx(0.766));
      const auto& op = t.schedule.ops[id];
      CHECK(e.at("name") == op.name);
      CHECK(e.at("pid").get<ts::RankId>() == op.rank);
      const bool host = std::holds_alternative<ts::Host>(op.body) || std::holds_alternative<ts::HostSync>(op.body);
      CHECK(e.at("tid").get<int>() == (host ? 0 : op.stream + 1));
      if (op.name == "ar") {
        CHECK(e.at("args").at("communicator") == "world");
        CHECK(e.at("args").at("bytes") == (1 << 24));
      }
      if (op.name == "gemm") {
        CHECK(e.at("args").at("flops").get<double>() == Approx(2.0 * 4096 * 1024 * 512 * 2));
        CHECK(e.at("args").at("layer") == 3);
        CHECK(e.at("args").at("phase") == "fwd");
      }
    }
  }
  CHECK(processes == std::map<int, std::string>{{0, "rank 0"}, {1, "rank 1"}});
  CHECK(threads.count({0, "host"}) == 1);
  CHECK(threads.count({1, "pp_send"}) == 1);
  CHECK(threads.count({1, "compute"}) == 1);
  CHECK(x_events == static_cast<int>(t.records.size()));
  CHECK(j.at("otherData").at("gpu") == "H100 \"SXM\"");
}
