// Per-op issue overhead: N empty kernels issued through the backend's issue path (a schedule of zero-byte
// elementwise ops: event record, launch, event record, deps, watchdog checks, host timestamps) against, in the
// same process, a bare loop of launches and a bare loop of launches with a cudaEventRecord before and after each.
// Host time per op over the issue loop; medians over repetitions.
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "bench/backend/bench_util.hpp"
#include "schedule/builder.hpp"

cudaError_t twinstep_bench_launch_empty(cudaStream_t stream);

namespace sch = twinstep::schedule;
namespace be = twinstep::backend;
using Clock = std::chrono::steady_clock;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

/// Host seconds per op of a bare loop of `n` launches, with or without two event records around each.
double bare_loop_s(int n, bool events, cudaStream_t stream, std::vector<cudaEvent_t>& evs) {
  check(cudaStreamSynchronize(stream), "sync");
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    if (events) check(cudaEventRecord(evs[2 * static_cast<std::size_t>(i)], stream), "record");
    check(twinstep_bench_launch_empty(stream), "launch");
    if (events) check(cudaEventRecord(evs[2 * static_cast<std::size_t>(i) + 1], stream), "record");
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  check(cudaStreamSynchronize(stream), "sync");
  return s / n;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"per-op issue overhead: backend issue path vs a bare launch loop"};
  int n = 2000, reps = 7;
  std::string out = "issue_overhead.json";
  app.add_option("-n", n, "ops per loop");
  app.add_option("-r", reps, "repetitions (medians)");
  app.add_option("-o", out, "JSON output");
  CLI11_PARSE(app, argc, argv);

  be::Runtime rt(be::ProcessGroup::kSelf);
  twinstep::schedule::ScheduleBuilder builder(1, {{"compute", 0}}, "issue_overhead");
  for (int i = 0; i < n; ++i)
    builder.add(0, "empty." + std::to_string(i), 0, twinstep::schedule::elementwise_kernel(0));
  const sch::Schedule& s = builder.schedule();

  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  std::vector<cudaEvent_t> evs(2 * static_cast<std::size_t>(n));
  for (auto& e : evs) check(cudaEventCreate(&e), "event");

  std::vector<double> bare, bare_ev, ours, ours_gpu;
  (void)bare_loop_s(n, true, stream, evs);  // warm-up
  be::Options o;
  o.warmup_steps = 1;
  o.steps = 1;
  for (int r = 0; r < reps; ++r) {
    bare.push_back(bare_loop_s(n, false, stream, evs));
    bare_ev.push_back(bare_loop_s(n, true, stream, evs));
    const auto trace = rt.execute(s, o);
    const auto& recs = trace.records;
    ours.push_back(static_cast<double>(recs.back().issue_ns - recs.front().issue_ns) * 1e-9 / (n - 1));
    ours_gpu.push_back(static_cast<double>(recs.back().end_ns - recs.front().start_ns) * 1e-9 / n);
  }
  const double b = twinstep::median(bare), be2 = twinstep::median(bare_ev);
  const double o1 = twinstep::median(ours), og = twinstep::median(ours_gpu);
  std::printf("bare launch loop                  %8.2f us/op\n", b * 1e6);
  std::printf("bare launch + 2 event records     %8.2f us/op\n", be2 * 1e6);
  std::printf("backend issue path                %8.2f us/op  (%.2fx the bare loop with events)\n", o1 * 1e6, o1 / be2);
  std::printf("backend GPU time per op (span/n)  %8.2f us/op\n", og * 1e6);

  be::Options ctx_o;
  ctx_o.warmup_steps = 0;
  ctx_o.steps = 1;
  const auto ctx_trace = rt.execute(s, ctx_o);
  auto doc = twinstep::bench::envelope("issue_overhead", ctx_trace.context, twinstep::bench::command_line(argc, argv));
  doc["protocol"] =
      "host seconds per op over a loop of n empty-kernel ops, median of r repetitions; the backend "
      "figure is (issue time of the last op - of the first) / (n-1) from its trace";
  doc["n"] = n;
  doc["reps"] = reps;
  doc["results"] = {{{"what", "bare_launch"}, {"us_per_op", b * 1e6}},
                    {{"what", "bare_launch_2_events"}, {"us_per_op", be2 * 1e6}},
                    {{"what", "backend_issue"}, {"us_per_op", o1 * 1e6}, {"ratio_vs_bare_2_events", o1 / be2}},
                    {{"what", "backend_gpu_span_per_op"}, {"us_per_op", og * 1e6}}};
  twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  for (auto& e : evs) cudaEventDestroy(e);
  cudaStreamDestroy(stream);
  return 0;
}
