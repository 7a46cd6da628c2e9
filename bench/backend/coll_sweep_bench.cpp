// Collective bandwidth through the backend's executor, following the nccl-tests protocol: for each size a schedule
// of `iters` back-to-back ops of one kind on one stream, one warm-up step of the same ops, then one measured step;
// per-op time = median of the per-op cudaEvent durations; algbw = size / time, busbw = algbw x the kind's factor
// (nccl-tests doc/PERFORMANCE.md). send_recv is one-directional (rank 0 sends, rank 1 receives): busbw = algbw.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "bench/backend/bench_util.hpp"
#include "common/units.hpp"
#include "schedule/builder.hpp"

namespace sch = twinstep::schedule;
namespace be = twinstep::backend;

namespace {

sch::Schedule sweep_schedule(const std::string& kind, std::uint32_t world, std::uint64_t bytes, int iters) {
  twinstep::schedule::ScheduleBuilder b(world, {{"comm", 0}}, "coll_sweep." + kind);
  b.world();
  auto push = [&](sch::RankId r, sch::Body body) {
    b.add(r, kind + "." + std::to_string(b.next_id()), 0, std::move(body));
  };
  for (int i = 0; i < iters; ++i) {
    for (std::uint32_t r = 0; r < world; ++r) {
      sch::Collective col;
      col.comm = 0;
      col.bytes = bytes;
      col.dtype = sch::DType::kBF16;
      if (kind == "all_reduce") col.kind = sch::CollectiveKind::kAllReduce;
      if (kind == "all_gather") col.kind = sch::CollectiveKind::kAllGather;
      if (kind == "reduce_scatter") col.kind = sch::CollectiveKind::kReduceScatter;
      if (kind == "all_to_all") {
        col.kind = sch::CollectiveKind::kAllToAll;
        col.send_bytes.assign(world, bytes / world);
      }
      if (kind == "send_recv") {
        if (r == 0) push(r, sch::Send{0, 1, bytes, 0});
        if (r == 1) push(r, sch::Recv{0, 0, bytes, 0});
        continue;
      }
      push(r, col);
    }
  }
  return b.take();
}

double bus_factor(const std::string& kind, double n) {
  if (kind == "all_reduce") return 2.0 * (n - 1) / n;
  if (kind == "send_recv") return 1.0;
  return (n - 1) / n;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"collective busbw through the twinstep backend (nccl-tests protocol)"};
  std::uint64_t min_bytes = 8 << 10, max_bytes = 1ull << 30;
  int factor = 2, iters = 20;
  std::vector<std::string> kinds{"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"};
  std::string out = "coll_sweep.json";
  app.add_option("-b", min_bytes, "smallest size in bytes");
  app.add_option("-e", max_bytes, "largest size in bytes");
  app.add_option("-f", factor, "size multiplication factor");
  app.add_option("-n", iters, "timed ops per size (the warm-up step runs as many)");
  app.add_option("-k,--kinds", kinds, "collective kinds");
  app.add_option("-o", out, "JSON output (rank 0)");
  CLI11_PARSE(app, argc, argv);

  be::Runtime rt;
  const auto world = static_cast<std::uint32_t>(rt.size());
  nlohmann::json doc;
  bool first = true;
  if (rt.rank() == 0) std::printf("%-15s %12s %10s %10s %10s\n", "kind", "bytes", "time_us", "algbw", "busbw");
  for (const auto& kind : kinds) {
    for (std::uint64_t bytes = min_bytes; bytes <= max_bytes; bytes *= static_cast<std::uint64_t>(factor)) {
      const auto s = sweep_schedule(kind, world, bytes, iters);
      be::Options o;
      o.warmup_steps = 1;
      o.steps = 1;
      o.timeout_s = 120;
      const auto trace = rt.execute(s, o);
      if (first) {
        doc = twinstep::bench::envelope("coll_sweep", trace.context, twinstep::bench::command_line(argc, argv));
        doc["protocol"] =
            "per size: one warm-up step of n ops, one measured step of n back-to-back ops on one "
            "stream; time = median per-op cudaEvent duration (max over ranks); busbw per nccl-tests";
        doc["iters"] = iters;
        first = false;
      }
      double t = 0;
      for (sch::RankId r = 0; r < world; ++r) {
        if (kind == "send_recv" && r > 1) continue;
        t = std::max(t, twinstep::median(twinstep::bench::op_durations_s(trace, r)));
      }
      const double algbw = static_cast<double>(bytes) / t / 1e9;
      const double busbw = algbw * bus_factor(kind, world);
      if (rt.rank() == 0) {
        std::printf("%-15s %12llu %10.2f %10.2f %10.2f\n", kind.c_str(), static_cast<unsigned long long>(bytes),
                    t * 1e6, algbw, busbw);
        doc["results"].push_back(
            {{"kind", kind}, {"bytes", bytes}, {"time_us", t * 1e6}, {"algbw_GBps", algbw}, {"busbw_GBps", busbw}});
      }
    }
  }
  if (rt.rank() == 0) twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  return 0;
}
