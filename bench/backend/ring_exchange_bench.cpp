// The TP ring exchange through the backend against a bare cudaMemcpyPeerAsync loop (issue 17 item 4): the check
// "copy-engine ring exchange >= 95 % of the reference".
//
// --mode backend (under `mpirun -np 2`, one GPU each): per transport and size, a schedule of `n` rounds in which
// each rank sends one message to the other on stream "tx" and receives the other's on "rx" (no deps: the rounds
// pipeline as far as the transport lets them; copy_engine and sm_kernel through the peer-mapped slots, nccl through
// ncclSend/ncclRecv); one warm-up step, `steps` measured; per direction GB/s = n x size / the median step time.
// --mode bare (one process, both GPUs, no MPI): the same traffic as a loop of cudaMemcpyPeerAsync, one stream per GPU,
// both directions at once, timed with events from the first copy's start to the last one's end; median over `steps`.
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "bench/backend/bench_util.hpp"
#include "common/error.hpp"
#include "schedule/builder.hpp"
#include "schedule/json.hpp"

namespace sch = twinstep::schedule;
namespace be = twinstep::backend;

namespace {

void check(cudaError_t st, const char* what) {
  if (st != cudaSuccess) {
    throw twinstep::Error(std::string(what) + " failed: " + cudaGetErrorName(st) + ": " + cudaGetErrorString(st));
  }
}

sch::Schedule ring_schedule(sch::Transport transport, std::uint32_t sms, std::uint64_t bytes, int rounds) {
  twinstep::schedule::ScheduleBuilder b(2, {{"compute", 0}, {"tx", -1}, {"rx", -1}},
                                        std::string("ring_exchange.") + sch::transport_name(transport));
  const sch::CommId tp = b.comm("tp", "tp", {0, 1});
  const std::uint32_t sm_count = transport == sch::Transport::kSmKernel ? sms : 0;
  for (int k = 0; k < rounds; ++k) {
    for (sch::RankId r = 0; r < 2; ++r) {
      b.add(r, "send." + std::to_string(k), 1, sch::Send{tp, 1 - r, bytes, 0, transport, sm_count});
      b.add(r, "recv." + std::to_string(k), 2, sch::Recv{tp, 1 - r, bytes, 0, transport, sm_count});
    }
  }
  return b.take();
}

std::vector<std::uint64_t> sizes(std::uint64_t lo, std::uint64_t hi, std::uint64_t factor) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t b = lo; b <= hi; b *= std::max<std::uint64_t>(2, factor)) out.push_back(b);
  return out;
}

int run_backend(const std::vector<std::uint64_t>& byte_sizes, int rounds, int steps,
                const std::vector<std::string>& transports, std::uint32_t sms, const std::string& out,
                const std::string& command) {
  be::Runtime rt;
  if (rt.size() != 2) throw twinstep::Error("--mode backend runs under `mpirun -np 2` (one rank per GPU)");
  nlohmann::json doc;
  bool first = true;
  if (rt.rank() == 0) {
    std::printf("%-12s %12s %6s %12s %12s %12s\n", "transport", "bytes", "rounds", "step_us", "GBps_per_dir",
                "send_us_med");
  }
  for (const auto& name : transports) {
    const sch::Transport transport = sch::parse_transport(name, "--transports");
    for (const auto bytes : byte_sizes) {
      be::Options o;
      o.warmup_steps = 1;
      o.steps = steps;
      o.timeout_s = 120;
      const auto trace = rt.execute(ring_schedule(transport, sms, bytes, rounds), o);
      if (first) {
        doc = twinstep::bench::envelope("ring_exchange", trace.context, command);
        doc["protocol"] =
            "per transport and size: `rounds` messages each way between two ranks, sends on stream tx, recvs on rx, "
            "no deps; one warm-up step, `steps` measured; GBps per direction = rounds x bytes / median step time";
        doc["rounds"] = rounds;
        first = false;
      }
      std::vector<twinstep::Nanos> step_ns = trace.step_times_ns;
      std::sort(step_ns.begin(), step_ns.end());
      const double step_s = static_cast<double>(step_ns[step_ns.size() / 2]) * 1e-9;
      std::vector<double> send_s;
      for (const auto& r : trace.records) {
        if (std::holds_alternative<sch::Send>(trace.schedule.ops[r.op].body)) {
          send_s.push_back(static_cast<double>(r.end_ns - r.start_ns) * 1e-9);
        }
      }
      const double gbps = static_cast<double>(bytes) * rounds / step_s / 1e9;
      const double send_med = twinstep::median(send_s);
      if (rt.rank() == 0) {
        std::printf("%-12s %12llu %6d %12.1f %12.2f %12.2f\n", name.c_str(), static_cast<unsigned long long>(bytes),
                    rounds, step_s * 1e6, gbps, send_med * 1e6);
        doc["results"].push_back(
            {{"transport", name},
             {"transport_ran",
              trace.context.count("transport_ran") != 0 ? trace.context.at("transport_ran") : std::string("nccl")},
             {"bytes", bytes},
             {"step_us", step_s * 1e6},
             {"GBps_per_direction", gbps},
             {"send_us_median", send_med * 1e6}});
      }
    }
  }
  if (rt.rank() == 0) twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  return 0;
}

int run_bare(const std::vector<std::uint64_t>& byte_sizes, int rounds, int steps, const std::string& out,
             const std::string& command) {
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (count < 2) throw twinstep::Error("--mode bare needs two GPUs visible to one process");
  int can01 = 0, can10 = 0;
  check(cudaDeviceCanAccessPeer(&can01, 0, 1), "cudaDeviceCanAccessPeer");
  check(cudaDeviceCanAccessPeer(&can10, 1, 0), "cudaDeviceCanAccessPeer");
  if (can01 == 0 || can10 == 0) throw twinstep::Error("GPUs 0 and 1 cannot access each other (no peer access)");
  const std::uint64_t most = *std::max_element(byte_sizes.begin(), byte_sizes.end());
  void* src[2] = {};
  void* dst[2] = {};
  cudaStream_t stream[2] = {};
  cudaEvent_t start[2] = {}, end[2] = {};
  for (int d = 0; d < 2; ++d) {
    check(cudaSetDevice(d), "cudaSetDevice");
    const cudaError_t en = cudaDeviceEnablePeerAccess(1 - d, 0);
    if (en != cudaErrorPeerAccessAlreadyEnabled) check(en, "cudaDeviceEnablePeerAccess");
    (void)cudaGetLastError();
    check(cudaMalloc(&src[d], most), "cudaMalloc");
    check(cudaMalloc(&dst[d], most), "cudaMalloc");
    check(cudaMemset(src[d], 0x3c, most), "cudaMemset");
    check(cudaStreamCreateWithFlags(&stream[d], cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreate(&start[d]), "cudaEventCreate");
    check(cudaEventCreate(&end[d]), "cudaEventCreate");
  }
  nlohmann::json doc = twinstep::bench::envelope("ring_exchange_bare", {}, command);
  doc["protocol"] =
      "per size: `rounds` cudaMemcpyPeerAsync each way, one stream per GPU (GPU d copies its buffer into GPU 1-d's), "
      "both directions at once; time = the longer direction's first-start to last-end (events); median over steps "
      "after one warm-up";
  doc["rounds"] = rounds;
  std::printf("%-12s %12s %6s %12s %12s\n", "reference", "bytes", "rounds", "step_us", "GBps_per_dir");
  for (const auto bytes : byte_sizes) {
    std::vector<double> times;
    for (int step = -1; step < steps; ++step) {
      for (int d = 0; d < 2; ++d) {
        check(cudaSetDevice(d), "cudaSetDevice");
        check(cudaEventRecord(start[d], stream[d]), "cudaEventRecord");
        for (int k = 0; k < rounds; ++k) {
          check(cudaMemcpyPeerAsync(dst[1 - d], 1 - d, src[d], d, bytes, stream[d]), "cudaMemcpyPeerAsync");
        }
        check(cudaEventRecord(end[d], stream[d]), "cudaEventRecord");
      }
      double t = 0;
      for (int d = 0; d < 2; ++d) {
        check(cudaSetDevice(d), "cudaSetDevice");
        check(cudaEventSynchronize(end[d]), "cudaEventSynchronize");
        float ms = 0;
        check(cudaEventElapsedTime(&ms, start[d], end[d]), "cudaEventElapsedTime");
        t = std::max(t, static_cast<double>(ms) * 1e-3);
      }
      if (step >= 0) times.push_back(t);
    }
    const double step_s = twinstep::median(times);
    const double gbps = static_cast<double>(bytes) * rounds / step_s / 1e9;
    std::printf("%-12s %12llu %6d %12.1f %12.2f\n", "memcpy_peer", static_cast<unsigned long long>(bytes), rounds,
                step_s * 1e6, gbps);
    doc["results"].push_back({{"transport", "cudaMemcpyPeerAsync"},
                              {"bytes", bytes},
                              {"step_us", step_s * 1e6},
                              {"GBps_per_direction", gbps}});
  }
  for (int d = 0; d < 2; ++d) {
    (void)cudaSetDevice(d);
    (void)cudaStreamSynchronize(stream[d]);
    (void)cudaEventDestroy(start[d]);
    (void)cudaEventDestroy(end[d]);
    (void)cudaStreamDestroy(stream[d]);
    (void)cudaFree(src[d]);
    (void)cudaFree(dst[d]);
  }
  twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"TP ring exchange: the backend's transports against a bare cudaMemcpyPeerAsync loop"};
  std::string mode = "backend";
  std::uint64_t min_bytes = 1ull << 20, max_bytes = 256ull << 20, factor = 4;
  int rounds = 20, steps = 5;
  std::uint32_t sms = 1;
  std::vector<std::string> transports{"copy_engine", "sm_kernel", "nccl"};
  std::string out = "ring_exchange.json";
  app.add_option("--mode", mode, "backend (under mpirun -np 2) or bare (one process, two GPUs)")
      ->check(CLI::IsMember({"backend", "bare"}));
  app.add_option("-b", min_bytes, "smallest message in bytes");
  app.add_option("-e", max_bytes, "largest message in bytes");
  app.add_option("-f", factor, "size multiplication factor");
  app.add_option("-n", rounds, "messages each way per step");
  app.add_option("--steps", steps, "measured steps");
  app.add_option("--transports", transports, "backend mode: copy_engine, sm_kernel, nccl");
  app.add_option("--sms", sms, "sm_kernel: the copy kernel's SMs (TE's ub_cfg num_sm; default 1)");
  app.add_option("-o", out, "JSON output (rank 0)");
  CLI11_PARSE(app, argc, argv);
  const auto byte_sizes = sizes(min_bytes, max_bytes, factor);
  const std::string command = twinstep::bench::command_line(argc, argv);
  try {
    return mode == "bare" ? run_bare(byte_sizes, rounds, steps, out, command)
                          : run_backend(byte_sizes, rounds, steps, transports, sms, out, command);
  } catch (const twinstep::Error& e) {
    std::fprintf(stderr, "ring_exchange_bench: %s\n", e.what());
    return 2;
  }
}
