// GPU tests of the backend: collective data against a host reference, deps and stream order read back from the
// trace, every kernel class, refusals, the concurrent ring exchange that channels (NCCL communicators per stream /
// direction) make possible, and the watchdog on a mismatched schedule and on a blocked issuing thread. Run one
// process per GPU under `mpirun -np 2 backend_tests --order decl` (every process runs the same tests in the same
// order). The planning behind them (can_execute, channels, rank plans) is tested without a GPU in plan_test.cpp
// and channels_test.cpp.
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/attention.hpp"
#include "backend/error.hpp"
#include "backend/executor.hpp"
#include "backend/handles.hpp"
#include "common/error.hpp"
#include "schedule/builder.hpp"
#include "schedule/json.hpp"
#include "tests/backend/bf16.hpp"
#include "tests/backend/ring_exchange.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::backend::test::from_bf16;
using twinstep::backend::test::layer_tag;
using twinstep::backend::test::ring_exchange;
using twinstep::backend::test::to_bf16;
using twinstep::schedule::elementwise_kernel;
using twinstep::schedule::gemm_kernel;
using twinstep::schedule::ScheduleBuilder;

namespace {

be::Options quick(int steps = 3) {
  be::Options o;
  o.warmup_steps = 1;
  o.steps = steps;
  o.timeout_s = 60;
  return o;
}

/// The value rank `r` puts at element `i` of the input of the collective instance `key`: small integers, so fp32
/// sums are exact.
float value(int r, int key, std::uint64_t i) {
  return static_cast<float>((r + 1) * 1000 + static_cast<int>((static_cast<std::uint64_t>(key) * 7 + i) % 997));
}

/// Fills each communication op's input from value() and checks its output against the host reference.
class ReferenceHook : public be::DataHook {
 public:
  ReferenceHook(const sch::Schedule& s, int rank) : s_(s), rank_(rank) {}
  void before(const sch::Op& op, const be::OpBuffers& b) override {
    std::vector<float> in(b.send_bytes / 4);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = value(rank_, op.tags.layer, i);
    if (!in.empty()) REQUIRE(cudaMemcpy(b.send, in.data(), b.send_bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    if (b.recv_bytes > 0) REQUIRE(cudaMemset(b.recv, 0xFF, b.recv_bytes) == cudaSuccess);  // NaN poison
  }
  void after(const sch::Op& op, const be::OpBuffers& b) override {
    std::vector<float> out(b.recv_bytes / 4);
    if (out.empty()) return;
    REQUIRE(cudaMemcpy(out.data(), b.recv, b.recv_bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    const int key = op.tags.layer;
    std::vector<float> want(out.size());
    if (const auto* c = std::get_if<sch::Collective>(&op.body)) {
      const auto n = static_cast<std::uint64_t>(s_.communicators[c->comm].members.size());
      switch (c->kind) {
        case sch::CollectiveKind::kAllReduce:
          for (std::size_t i = 0; i < want.size(); ++i) {
            want[i] = 0;
            for (std::uint64_t r = 0; r < n; ++r) want[i] += value(static_cast<int>(r), key, i);
          }
          break;
        case sch::CollectiveKind::kAllGather: {
          const std::uint64_t per = want.size() / n;
          for (std::size_t i = 0; i < want.size(); ++i) want[i] = value(static_cast<int>(i / per), key, i % per);
          break;
        }
        case sch::CollectiveKind::kReduceScatter:
          for (std::size_t i = 0; i < want.size(); ++i) {
            want[i] = 0;
            for (std::uint64_t r = 0; r < n; ++r) {
              want[i] += value(static_cast<int>(r), key, static_cast<std::uint64_t>(rank_) * want.size() + i);
            }
          }
          break;
        case sch::CollectiveKind::kBroadcast:
          for (std::size_t i = 0; i < want.size(); ++i) want[i] = value(static_cast<int>(c->root), key, i);
          break;
        case sch::CollectiveKind::kAllToAll: {
          // From member j: its send_bytes[me] bytes, found after its sends to members before me.
          std::size_t w = 0;
          for (const auto& other : s_.ops) {
            const auto* oc = std::get_if<sch::Collective>(&other.body);
            if (oc == nullptr || other.tags.layer != key) continue;
            std::uint64_t off = 0;
            for (int t = 0; t < rank_; ++t) off += oc->send_bytes[static_cast<std::size_t>(t)];
            const std::uint64_t cnt = oc->send_bytes[static_cast<std::size_t>(rank_)] / 4;
            for (std::uint64_t i = 0; i < cnt; ++i) want[w++] = value(static_cast<int>(other.rank), key, off / 4 + i);
          }
          REQUIRE(w == want.size());
          break;
        }
      }
    } else if (const auto* r = std::get_if<sch::Recv>(&op.body)) {
      for (std::size_t i = 0; i < want.size(); ++i) want[i] = value(static_cast<int>(r->peer), key, i);
    }
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < out.size(); ++i) wrong += (out[i] == want[i]) ? 0 : 1;
    INFO("op " << op.name << " on rank " << rank_ << ": " << wrong << " of " << out.size() << " elements wrong");
    CHECK(wrong == 0);
    ++checked;
  }
  int checked = 0;

 private:
  const sch::Schedule& s_;
  int rank_;
};

}  // namespace

TEST_CASE("backend::execute: every collective kind and send/recv match a host reference", "[backend][gpu]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2");
    return;
  }
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  int key = 0;
  auto both = [&](const std::string& name, auto make) {
    ++key;
    for (sch::RankId r = 0; r < 2; ++r) sb.add(r, name, 1, make(r), {}, layer_tag(key));
  };
  const std::uint64_t kBytes = 3u << 20;  // 3 MiB: several NCCL chunks, not a power of two
  using CK = sch::CollectiveKind;
  both("ar", [&](sch::RankId) { return sch::Collective{CK::kAllReduce, 0, kBytes, sch::DType::kFP32, {}, 0}; });
  both("ag", [&](sch::RankId) { return sch::Collective{CK::kAllGather, 0, kBytes, sch::DType::kFP32, {}, 0}; });
  both("rs", [&](sch::RankId) { return sch::Collective{CK::kReduceScatter, 0, kBytes, sch::DType::kFP32, {}, 0}; });
  both("a2a", [&](sch::RankId r) {
    std::vector<std::uint64_t> split =
        r == 0 ? std::vector<std::uint64_t>{4096, 1u << 20} : std::vector<std::uint64_t>{(1u << 20) + 512, 64};
    return sch::Collective{CK::kAllToAll, 0, split[0] + split[1], sch::DType::kFP32, split, 0};
  });
  both("bc", [&](sch::RankId) { return sch::Collective{CK::kBroadcast, 0, kBytes, sch::DType::kFP32, {}, 1}; });
  ++key;
  sb.add(0, "p2p.a", 1, sch::Send{0, 1, 1u << 20, 0}, {}, layer_tag(key));
  sb.add(1, "p2p.a", 1, sch::Recv{0, 0, 1u << 20, 0}, {}, layer_tag(key));
  ++key;
  sb.add(1, "p2p.b", 1, sch::Send{0, 0, 12345 * 4, 1}, {}, layer_tag(key));
  sb.add(0, "p2p.b", 1, sch::Recv{0, 1, 12345 * 4, 1}, {}, layer_tag(key));

  ReferenceHook hook(s, rt.rank());
  be::Options o;
  o.warmup_steps = 0;
  o.steps = 1;
  o.hook = &hook;
  const auto trace = rt.execute(s, o);
  CHECK(hook.checked == 6);  // five collectives and one recv per rank
  REQUIRE(trace.records.size() == s.ops.size());
  for (const auto& r : trace.records) CHECK(r.end_ns > r.start_ns);
}

TEST_CASE("backend::execute: deps, stream FIFO order and host_sync hold in the measured trace", "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1, {{"compute", 0}, {"side", -1}});
  sb.world();
  auto& s = sb.schedule();
  const auto a = sb.add(0, "a.gemm", 0, gemm_kernel(8192, 8192, 8192));
  const auto b = sb.add(0, "b.elem.after_a", 1, elementwise_kernel(1ull << 28), {a});
  const auto c = sb.add(0, "c.gemm", 0, gemm_kernel(4096, 4096, 4096));
  const auto d = sb.add(0, "d.elem.fifo_after_b", 1, elementwise_kernel(1ull << 28));
  const auto h = sb.add(0, "h.sync_on_d", 0, sch::HostSync{d});
  const auto w = sb.add(0, "w.host", 0, sch::Host{200'000});
  const auto e = sb.add(0, "e.gemm.after_sync", 0, gemm_kernel(2048, 2048, 2048));
  const auto trace = rt.execute(s, quick(3));
  REQUIRE(trace.records.size() == s.ops.size());
  const auto& r = trace.records;
  for (std::size_t i = 0; i < r.size(); ++i) CHECK(r[i].op == i);
  CHECK(r[b].start_ns >= r[a].end_ns);             // dep across streams
  CHECK(r[c].start_ns >= r[a].end_ns);             // FIFO on compute
  CHECK(r[d].start_ns >= r[b].end_ns);             // FIFO on side
  constexpr twinstep::Nanos kAxisSlack = 20'000;   // host vs device axis offset (polling latency)
  CHECK(r[h].end_ns + kAxisSlack >= r[d].end_ns);  // the host waited for d
  CHECK(r[w].end_ns - r[w].start_ns >= 200'000);   // the host op spun for its duration
  CHECK(r[e].issue_ns >= r[w].end_ns);             // issue resumes after the host work
  // 8192^3 bf16 GEMM is 1.1 TFLOP: on an H100/H200 between 1 ms and 10 ms.
  const double gemm_s = static_cast<double>(r[a].end_ns - r[a].start_ns) * 1e-9;
  CHECK(gemm_s > 1e-3);
  CHECK(gemm_s < 10e-3);
  CHECK(trace.step_times_ns.size() == 3);
  CHECK(trace.producer == "backend");
  for (const char* key : {"gpu", "cuda_driver", "cuda_runtime", "nccl", "hosts", "git_revision", "date"}) {
    INFO(key);
    CHECK(!trace.context.at(key).empty());
  }
}

TEST_CASE("backend::execute: every compute kernel class runs with time consistent with its work", "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  auto& s = sb.schedule();
  const auto el = sb.add(0, "elem.2GiB", 0, elementwise_kernel(2ull << 30));
  const auto empty = sb.add(0, "elem.empty", 0, elementwise_kernel(0));
  const auto gg =
      sb.add(0, "grouped", 0, sch::Compute{sch::GroupedGemm{{1024, 0, 3000, 512}, 2048, 4096, sch::DType::kBF16}, 0});
  const auto af = sb.add(0, "attn.fwd", 0,
                         sch::Compute{sch::Attention{2, 32, 8, 2048, 2048, 128, true, false, sch::DType::kBF16}, 0});
  const auto ab = sb.add(0, "attn.bwd", 0,
                         sch::Compute{sch::Attention{2, 32, 8, 2048, 2048, 128, true, true, sch::DType::kBF16}, 0});
  const auto opt = sb.add(0, "adam", 0, sch::Compute{sch::Optimizer{1ull << 28, sch::DType::kBF16}, 0});
  const auto d2h = sb.add(0, "d2h", 0, sch::Compute{sch::Memcpy{256ull << 20, sch::CopyKind::kD2H}, 0});
  const auto f32 = sb.add(0, "gemm.fp32", 0, gemm_kernel(2048, 2048, 2048, sch::DType::kFP32));
  const auto f16 = sb.add(0, "gemm.fp16", 0, gemm_kernel(2048, 2048, 2048, sch::DType::kFP16));
  const auto trace = rt.execute(s, quick(3));
  auto dur = [&](sch::OpId id) {
    return static_cast<double>(trace.records[id].end_ns - trace.records[id].start_ns) * 1e-9;
  };
  for (const auto& r : trace.records) CHECK(r.end_ns >= r.start_ns);
  const double elem_bw = 2.0 * (1ull << 30) * 2 / 2 / dur(el);  // read 1 GiB + write 1 GiB
  INFO("elementwise " << elem_bw / 1e12 << " TB/s");
  CHECK(elem_bw > 1.0e12);  // HBM3/3e: 3.35-4.8 TB/s datasheet
  CHECK(elem_bw < 6.0e12);
  CHECK(dur(empty) < 50e-6);
  CHECK(dur(gg) > 0);
  CHECK(dur(ab) > 2.0 * dur(af));                         // backward does 2.5x the GEMM work of forward
  const double adam_bw = (1ull << 28) * 28.0 / dur(opt);  // grad, master, m, v in; master, m, v, param out
  INFO("adam " << adam_bw / 1e12 << " TB/s");
  CHECK(adam_bw > 0.8e12);
  CHECK(dur(d2h) > (256ull << 20) / 100e9);  // no faster than 100 GB/s over PCIe/C2C
  CHECK(dur(f32) > dur(f16));                // fp32 without tensor cores is slower than fp16
}

TEST_CASE("backend::attention: causal and full outputs match a host reference (GQA, block-triangular plan)",
          "[backend][gpu]") {
  for (bool causal : {true, false}) {
    // b=1, 4 query heads over 2 kv heads, 256 positions (causal: leaf tiles of 16, two levels of strips), d=64.
    const sch::Attention a{1, 4, 2, 256, 256, 64, causal, false, sch::DType::kBF16};
    const std::uint64_t g = 2, sq = 256, d = 64, bh = 2;
    const auto bytes = be::attention_buffer_bytes(a);
    std::mt19937 rng(causal ? 7 : 11);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    std::vector<std::uint16_t> q(bytes.q / 2), k(bytes.k / 2), v(bytes.k / 2);
    for (auto* vec : {&q, &k, &v}) {
      for (auto& x : *vec) x = to_bf16(u(rng));
    }
    // Owned (handles.hpp): a failing REQUIRE frees them too.
    const be::DeviceMemory dq = be::device_alloc(bytes.q), dk = be::device_alloc(bytes.k),
                           dv = be::device_alloc(bytes.k), ds = be::device_alloc(bytes.s),
                           dout = be::device_alloc(bytes.q);
    REQUIRE(cudaMemcpy(dq.get(), q.data(), bytes.q, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(dk.get(), k.data(), bytes.k, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(dv.get(), v.data(), bytes.k, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemset(ds.get(), 0xFF, bytes.s) == cudaSuccess);    // NaN scores: every used score must be written
    REQUIRE(cudaMemset(dout.get(), 0xFF, bytes.q) == cudaSuccess);  // NaN output: every element must be written
    const be::CudaStream stream = be::make_stream(0);
    const be::CublasHandle blas = be::make_cublas();
    REQUIRE(cublasSetStream(blas.get(), stream.get()) == CUBLAS_STATUS_SUCCESS);
    be::AttentionBuffers buf;
    buf.q = dq.get();
    buf.k = dk.get();
    buf.v = dv.get();
    buf.s = ds.get();
    buf.o = dout.get();
    be::run_attention(blas.get(), stream.get(), be::attention_calls(a, buf));
    REQUIRE(cudaStreamSynchronize(stream.get()) == cudaSuccess);
    std::vector<std::uint16_t> o(bytes.q / 2);
    REQUIRE(cudaMemcpy(o.data(), dout.get(), bytes.q, cudaMemcpyDeviceToHost) == cudaSuccess);

    // Host reference in double over the same bf16 inputs; query head h of kv head b at position i is row i*g + h.
    double err2 = 0, ref2 = 0;
    std::size_t nan = 0;
    for (std::uint64_t b = 0; b < bh; ++b) {
      for (std::uint64_t i = 0; i < sq; ++i) {
        for (std::uint64_t h = 0; h < g; ++h) {
          const std::uint64_t row = (b * sq + i) * g + h;
          const std::uint64_t keys = causal ? i + 1 : sq;
          std::vector<double> sc(keys);
          double mx = -1e300;
          for (std::uint64_t j = 0; j < keys; ++j) {
            double dot = 0;
            for (std::uint64_t x = 0; x < d; ++x) dot += from_bf16(q[row * d + x]) * from_bf16(k[(b * sq + j) * d + x]);
            sc[j] = dot;
            mx = std::max(mx, dot);
          }
          double sum = 0;
          for (auto& x : sc) sum += (x = std::exp(x - mx));
          for (std::uint64_t x = 0; x < d; ++x) {
            double ref = 0;
            for (std::uint64_t j = 0; j < keys; ++j) ref += sc[j] / sum * from_bf16(v[(b * sq + j) * d + x]);
            const double got = from_bf16(o[row * d + x]);
            if (std::isnan(got)) ++nan;
            err2 += (got - ref) * (got - ref);
            ref2 += ref * ref;
          }
        }
      }
    }
    INFO((causal ? "causal" : "full") << ": relative error " << std::sqrt(err2 / ref2) << ", NaN " << nan);
    CHECK(nan == 0);
    CHECK(std::sqrt(err2 / ref2) < 2e-2);  // bf16 operands, scores and probabilities
  }
}

TEST_CASE("backend::execute: causal attention takes well under the full square's time (it runs the IR's FLOPs)",
          "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  auto& s = sb.schedule();
  std::vector<sch::OpId> ids;
  for (bool bwd : {false, true}) {
    for (bool causal : {true, false}) {
      ids.push_back(sb.add(0, std::string(bwd ? "bwd" : "fwd") + (causal ? ".causal" : ".full"), 0,
                           sch::Compute{sch::Attention{1, 32, 8, 4096, 4096, 128, causal, bwd, sch::DType::kBF16}, 0}));
    }
  }
  const auto trace = rt.execute(s, quick(3));
  auto dur = [&](sch::OpId id) {
    return static_cast<double>(trace.records[id].end_ns - trace.records[id].start_ns) * 1e-9;
  };
  for (std::size_t i = 0; i < ids.size(); i += 2) {
    const auto& k = std::get<sch::Attention>(std::get<sch::Compute>(s.ops[ids[i]].body).kernel);
    const double flops = be::planned_attention_flops(be::plan_attention(k), k.backward);
    INFO((i == 0 ? "fwd" : "bwd") << ": causal " << dur(ids[i]) * 1e6 << " us (" << flops / dur(ids[i]) / 1e12
                                  << " TFLOP/s), full " << dur(ids[i + 1]) * 1e6 << " us");
    CHECK(dur(ids[i]) < 0.75 * dur(ids[i + 1]));  // half the GEMM work; smaller GEMMs run a little less efficiently
    CHECK(dur(ids[i]) > 0.3 * dur(ids[i + 1]));
    WARN((i == 0 ? "fwd" : "bwd") << ": causal " << dur(ids[i]) * 1e6 << " us, full " << dur(ids[i + 1]) * 1e6
                                  << " us, causal/full " << dur(ids[i]) / dur(ids[i + 1]));
  }
}

TEST_CASE("backend::execute: refuses before starting with NotFeasibleError", "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "g", 0, gemm_kernel(64, 64, 64));
  sb.add(1, "g", 0, gemm_kernel(64, 64, 64));
  try {
    (void)rt.execute(s, quick());
    FAIL("expected NotFeasibleError");
  } catch (const twinstep::NotFeasibleError& e) {
    CHECK(std::string(e.what()).find("mpirun -np 2") != std::string::npos);
    CHECK(e.code() == twinstep::ExitCode::kNotFeasible);
  }
}

namespace {

/// The byte a rank puts at position `i` of its `n`-th peer-mapped message (counted over the whole run): a slot that
/// still holds an earlier message reads wrong.
std::uint8_t peer_byte(int rank, std::uint64_t n, std::uint64_t i) {
  return static_cast<std::uint8_t>((static_cast<std::uint64_t>(rank) * 131 + n * 29 + i * 7 + i / 251) % 253);
}

/// Serialized: fills each send with peer_byte() and checks each received slot against the sender's pattern. With
/// one link per direction, a rank's n-th recv is its peer's n-th send.
class PeerHook : public be::DataHook {
 public:
  explicit PeerHook(int rank) : rank_(rank) {}
  void before(const sch::Op& op, const be::OpBuffers& b) override {
    if (!std::holds_alternative<sch::Send>(op.body)) {
      CHECK(b.peer_slot);  // never written here: the sender may already have filled it
      return;
    }
    std::vector<std::uint8_t> in(b.send_bytes);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = peer_byte(rank_, sent_, i);
    ++sent_;
    REQUIRE(cudaMemcpy(b.send, in.data(), in.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  void after(const sch::Op& op, const be::OpBuffers& b) override {
    const auto* r = std::get_if<sch::Recv>(&op.body);
    if (r == nullptr) return;
    std::vector<std::uint8_t> out(b.recv_bytes);
    REQUIRE(cudaMemcpy(out.data(), b.recv, out.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < out.size(); ++i) wrong += out[i] != peer_byte(static_cast<int>(r->peer), received_, i);
    INFO(op.name << ", message " << received_ << " on rank " << rank_ << ": " << wrong << " of " << out.size()
                 << " bytes wrong");
    CHECK(wrong == 0);
    ++received_;
  }
  std::uint64_t received_ = 0;

 private:
  int rank_;
  std::uint64_t sent_ = 0;
};

/// TE's ring exchange on two ranks over `transport`: per round each rank sends to the other on "tx" (after its
/// previous recv, as the lowering orders them) and receives on "rx"; the messages of `sizes`, one per round.
sch::Schedule peer_ring(sch::Transport transport, const std::vector<std::uint64_t>& sizes) {
  ScheduleBuilder sb(2, {{"compute", 0}, {"tx", -1}, {"rx", -1}});
  sb.world();
  const std::uint32_t sms = transport == sch::Transport::kSmKernel ? 4 : 0;
  std::vector<sch::OpId> prev_recv(2, sch::kNoOp);
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    for (sch::RankId r = 0; r < 2; ++r) {
      std::vector<sch::OpId> deps;
      if (prev_recv[r] != sch::kNoOp) deps.push_back(prev_recv[r]);
      sb.add(r, "send" + std::to_string(k), 1, sch::Send{0, 1 - r, sizes[k], 0, transport, sms}, deps);
      prev_recv[r] = sb.add(r, "recv" + std::to_string(k), 2, sch::Recv{0, 1 - r, sizes[k], 0, transport, sms});
    }
  }
  return sb.take();
}

}  // namespace

// Two ranks on two GPUs, or on ONE GPU (no NCCL op: CUDA IPC maps the other process's memory on the same device):
// `mpirun -np 2 backend_tests '[peer]'` (ctest: backend_tests_peer_mpi2).
TEST_CASE("backend::execute: copy_engine and sm_kernel ring exchanges deliver every byte over peer-mapped memory",
          "[backend][gpu][peer]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2 (one GPU or two)");
    return;
  }
  for (const auto transport : {sch::Transport::kCopyEngine, sch::Transport::kSmKernel}) {
    const std::string name = sch::transport_name(transport);
    INFO(name);
    // Five rounds: both slots reused (credits), sizes that are not multiples of 16 (the copy kernel's tail), 24 MiB.
    const std::vector<std::uint64_t> sizes{1u << 20, 12345, 24u << 20, 4096 + 3, 777};
    const auto s = peer_ring(transport, sizes);
    PeerHook hook(rt.rank());
    be::Options o = quick(2);
    o.hook = &hook;
    const auto trace = rt.execute(s, o);
    CHECK(hook.received_ == sizes.size() * 3);  // one warm-up and two measured steps
    CHECK(trace.context.at("transport_ran") == name);
    CHECK(trace.context.at("transport_note").find("one-thread kernels") != std::string::npos);
    for (const auto& r : trace.records) CHECK(r.end_ns >= r.start_ns);

    // Unhooked and concurrent, 40 rounds of 8 MiB: the sender runs up to a slot ahead of its receiver.
    const auto many = rt.execute(peer_ring(transport, std::vector<std::uint64_t>(40, 8u << 20)), quick(3));
    CHECK(many.step_times_ns.size() == 3);
    // No recv ends before the matching send began (cross-rank causality; clock alignment of a few us as slack).
    constexpr twinstep::Nanos kClockSlackNs = 100'000;
    for (const auto& op : many.schedule.ops) {
      if (!std::holds_alternative<sch::Recv>(op.body)) continue;
      // Round k is ops send(0) recv(0) send(1) recv(1) from 4k: rank 0's recv is fed by the op after it.
      const auto sender = static_cast<sch::OpId>(op.rank == 0 ? op.id + 1 : op.id - 3);
      REQUIRE(std::holds_alternative<sch::Send>(many.schedule.ops[sender].body));
      CHECK(many.records[op.id].end_ns + kClockSlackNs >= many.records[sender].start_ns);
    }
  }
}

// Declared before the watchdog tests: under mpirun -np 2, a Runtime created after the mismatched-schedule test's
// abort (leaked communicators, a broken runtime) segfaulted in this test's GEMMs with the monitor on or off
// (session 3, two H200); a watchdog abort ends the process in real runs, so only this test binary meets it.
TEST_CASE("backend::execute: the GPU monitor records the SM clock and power of the measured steps", "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  auto& s = sb.schedule();
  for (int i = 0; i < 40; ++i) sb.add(0, "gemm." + std::to_string(i), 0, gemm_kernel(8192, 8192, 8192));  // ~1 ms each
  const auto trace = rt.execute(s, quick(3));
  const auto& ctx = trace.context;
  REQUIRE(ctx.count("gpu_monitor") == 1);
  INFO(ctx.at("gpu_monitor"));
  // The driver ships libnvidia-ml.so.1 with libcuda: on a GPU machine the monitor must have loaded it.
  REQUIRE(ctx.at("gpu_monitor").rfind("nvml:", 0) == 0);
  const double median = std::stod(ctx.at("gpu_monitor.sm_clock_mhz.median"));
  CHECK(median > 300);  // a busy H100/H200 runs at 1-1.98 GHz
  CHECK(median < 2500);
  CHECK(std::stod(ctx.at("gpu_monitor.sm_clock_mhz.min")) <= median);
  CHECK(std::stod(ctx.at("gpu_monitor.sm_clock_mhz.max")) >= median);
  CHECK(std::stod(ctx.at("gpu_monitor.samples")) >= 5);  // >= 3 x 40 ms of GEMMs at 5 ms
  const double power = std::stod(ctx.at("gpu_monitor.power_w_mean"));
  CHECK(power > 50);
  CHECK(power < 1500);
  const double cap = std::stod(ctx.at("gpu_monitor.power_cap_fraction"));
  CHECK(cap >= 0);
  CHECK(cap <= 1);
}

TEST_CASE("backend::execute: the GPU monitor's series has increasing times within the measured steps",
          "[backend][gpu]") {
  setenv("TWINSTEP_GPU_MONITOR_INTERVAL_MS", "1", 1);
  be::Runtime rt(be::ProcessGroup::kSelf);
  unsetenv("TWINSTEP_GPU_MONITOR_INTERVAL_MS");
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  for (int i = 0; i < 20; ++i) sb.add(0, "gemm." + std::to_string(i), 0, gemm_kernel(8192, 8192, 8192));  // ~1 ms each
  std::vector<be::GpuSeries> series;
  be::Options o = quick(3);
  o.monitor_series = &series;
  const auto trace = rt.execute(sb.schedule(), o);
  REQUIRE(series.size() == 1);
  const be::GpuSeries& s = series[0];
  INFO(s.unavailable);
  REQUIRE(s.unavailable.empty());
  CHECK(s.interval_ms == 1.0);
  CHECK(s.dropped == 0);
  REQUIRE(s.samples.size() >= 15);  // 3 steps of ~20 ms at 1 ms
  CHECK(static_cast<double>(s.samples.size()) == std::stod(trace.context.at("gpu_monitor.samples")));
  REQUIRE(trace.step_times_ns.size() == 3);
  std::vector<int> per_step(3, 0);
  for (std::size_t i = 0; i < s.samples.size(); ++i) {
    const auto& x = s.samples[i];
    INFO("sample " << i << " step " << x.step << " t_ns " << x.t_ns << " t_step_ns " << x.t_step_ns);
    REQUIRE(x.step >= 0);
    REQUIRE(x.step < 3);
    ++per_step[static_cast<std::size_t>(x.step)];
    if (i > 0) {
      CHECK(x.t_ns > s.samples[i - 1].t_ns);
      CHECK(x.step >= s.samples[i - 1].step);
    }
    CHECK(x.t_step_ns >= 0);  // sampled only after its step's host origin
    // ... and before the step's streams drained (its span plus the drain's polling and one NVML read, under 2 ms).
    CHECK(x.t_step_ns <= trace.step_times_ns[static_cast<std::size_t>(x.step)] + 2'000'000);
    CHECK(x.t_ns - x.t_step_ns >= (x.step == 0 ? 0 : s.samples[0].t_ns));  // later steps start later
    if (x.step == 0) CHECK(x.t_ns == x.t_step_ns);
    CHECK(x.sm_clock_mhz > 300);
    CHECK(x.power_w > 50);
  }
  for (int n : per_step) CHECK(n >= 5);

  // The file `twinstep run --monitor-series` writes: the header and one line per sample.
  const std::string path = "/tmp/twinstep_series_test_" + std::to_string(getpid()) + ".csv";
  be::write_series_csv(series, path, "--monitor-series");
  std::FILE* f = std::fopen(path.c_str(), "r");
  REQUIRE(f != nullptr);
  std::size_t data_lines = 0;
  char line[512];
  bool header = false;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (line[0] == '#') continue;
    if (!header) {
      CHECK(std::string(line) == "rank,step,t_ns,t_step_ns,sm_clock_mhz,power_w,event_reasons\n");
      header = true;
      continue;
    }
    ++data_lines;
  }
  std::fclose(f);
  std::remove(path.c_str());
  CHECK(data_lines == s.samples.size());
}

namespace {

/// Runs a two-rank schedule that hangs, with a 3 s step limit: the watchdog must end it within the limit + 5 s on both
/// ranks (rank 1 waiting at the step barrier), and the runtime refuse work after. Returns this rank's message.
std::string expect_watchdog(be::Runtime& rt, const sch::Schedule& s) {
  be::Options o;
  o.warmup_steps = 0;
  o.steps = 1;
  o.timeout_s = 3.0;
  const auto t0 = std::chrono::steady_clock::now();
  std::string message;
  try {
    (void)rt.execute(s, o);
  } catch (const be::BackendError& e) {
    message = e.what();
  }
  const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(message);
  CHECK(waited_s >= 3.0);
  CHECK(waited_s < 8.0);
  CHECK(message.find("exceeded its time limit") != std::string::npos);
  if (rt.rank() == 1) CHECK(message.find("waiting for the other ranks") != std::string::npos);
  CHECK_THROWS_AS(rt.execute(s, o), be::BackendError);  // the runtime refuses work after an abort
  return message;
}

}  // namespace

TEST_CASE("backend::watchdog: a mismatched schedule times out, names the unfinished op and aborts", "[backend][gpu]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2");
    return;
  }
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "ar.ok", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 1u << 20, sch::DType::kBF16, {}, 0});
  sb.add(1, "ar.ok", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 1u << 20, sch::DType::kBF16, {}, 0});
  sb.add(0, "ar.extra", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 1u << 20, sch::DType::kBF16, {}, 0});
  const std::string message = expect_watchdog(rt, s);
  CHECK(message.find("aborted") != std::string::npos);
  if (rt.rank() == 0) {
    CHECK(message.find("op 2 \"ar.extra\"") != std::string::npos);
    CHECK(message.find("stream \"comm\"") != std::string::npos);
  }
}

namespace {

/// Fills each send's input and checks each recv's output, without serializing the ops.
class ConcurrentHook : public be::DataHook {
 public:
  explicit ConcurrentHook(int rank) : rank_(rank) {}
  [[nodiscard]] bool serialize() const override { return false; }
  void before(const sch::Op& op, const be::OpBuffers& b) override {
    if (std::holds_alternative<sch::Send>(op.body)) {
      std::vector<float> in(b.send_bytes / 4);
      for (std::size_t i = 0; i < in.size(); ++i) in[i] = value(rank_, step_, i);
      REQUIRE(cudaMemcpy(b.send, in.data(), b.send_bytes, cudaMemcpyHostToDevice) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);  // the DMA done (the op's stream is non-blocking)
    } else if (std::holds_alternative<sch::Recv>(op.body)) {
      std::vector<float> poison(b.recv_bytes / 4, -1.0f);
      REQUIRE(cudaMemcpy(b.recv, poison.data(), b.recv_bytes, cudaMemcpyHostToDevice) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);
    }
  }
  void after(const sch::Op& op, const be::OpBuffers& b) override {
    if (const auto* r = std::get_if<sch::Recv>(&op.body)) {
      std::vector<float> out(b.recv_bytes / 4);
      REQUIRE(cudaMemcpy(out.data(), b.recv, b.recv_bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < out.size(); ++i)
        wrong += out[i] == value(static_cast<int>(r->peer), step_, i) ? 0 : 1;
      INFO(wrong << " of " << out.size() << " elements wrong on rank " << rank_);
      CHECK(wrong == 0);
      ++checked;
      ++step_;
    }
  }
  int checked = 0;

 private:
  int rank_;
  int step_ = 0;
};

}  // namespace

TEST_CASE("backend::execute: a ring exchange with send and recv on separate streams completes and delivers",
          "[backend][gpu]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2");
    return;
  }
  // 1 GiB per direction: far more than NCCL's p2p buffers (channels x NCCL_BUFFSIZE; on two H200 64 MiB still fit,
  // the send finished before the peer's recv was even issued), so a send cannot finish before its recv runs. On one
  // NCCL communicator each rank's recv would queue behind its own send, which waits for the peer's recv: deadlock.
  const auto s = ring_exchange(1u << 30, 1);
  ConcurrentHook hook(rt.rank());
  be::Options o;
  o.warmup_steps = 1;
  o.steps = 3;
  o.timeout_s = 20;
  o.hook = &hook;
  const auto trace = rt.execute(s, o);
  CHECK(hook.checked == 4);  // one recv per step
  // A send this large cannot finish before the peer's matching recv has started (cross-rank causality, with the
  // trace's clock alignment of a few us as slack). Whether a rank's own send and recv overlap depends on the hook's
  // host work between issuing them (it fills 1 GiB on the host), so that is not asserted.
  constexpr twinstep::Nanos kClockSlackNs = 100'000;
  for (sch::RankId r = 0; r < 2; ++r) {
    const auto& snd = trace.records[1 + 3 * r];
    const auto& peer_rcv = trace.records[2 + 3 * (1 - r)];
    REQUIRE(std::holds_alternative<sch::Send>(s.ops[snd.op].body));
    REQUIRE(std::holds_alternative<sch::Recv>(s.ops[peer_rcv.op].body));
    INFO("rank " << r << " send " << snd.start_ns << ".." << snd.end_ns << ", peer recv " << peer_rcv.start_ns << ".."
                 << peer_rcv.end_ns);
    CHECK(snd.end_ns + kClockSlackNs >= peer_rcv.start_ns);
    CHECK(peer_rcv.end_ns + kClockSlackNs >= snd.start_ns);
  }
  // And several rounds with a GEMM between them, no hook.
  const auto multi = rt.execute(ring_exchange(16u << 20, 4), quick(3));
  CHECK(multi.step_times_ns.size() == 3);
}

namespace {

/// Blocks the issuing thread inside the hook, as a hung call would.
class BlockingHook : public be::DataHook {
 public:
  void before(const sch::Op&, const be::OpBuffers&) override { std::this_thread::sleep_for(std::chrono::seconds(60)); }
  void after(const sch::Op&, const be::OpBuffers&) override {}
};

}  // namespace

// Run only by the next test, in a child process (it ends the process).
TEST_CASE("backend::watchdog child: issuing thread blocked in a call", "[.][watchdog_child]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1);
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "ar.blocked", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 4096, sch::DType::kBF16, {}, 0});
  BlockingHook hook;
  be::Options o;
  o.warmup_steps = 0;
  o.steps = 1;
  o.timeout_s = 1.0;
  o.hook = &hook;
  std::fprintf(stderr, "child: executing\n");
  (void)rt.execute(s, o);
  FAIL("the watchdog should have ended the process");
}

TEST_CASE("backend::watchdog: a thread blocked in a call is ended within limit + 2 s, naming rank and op",
          "[backend][gpu]") {
  char exe[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  REQUIRE(n > 0);
  // Not under the launcher: the child is a group of one.
  const std::string cmd = "env -u OMPI_COMM_WORLD_SIZE -u PMI_SIZE -u PMIX_RANK -u SLURM_PROCID -u MPI_LOCALNRANKS '" +
                          std::string(exe) + "' '[watchdog_child]' 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  char buf[512];
  std::chrono::steady_clock::time_point executing{};
  while (std::fgets(buf, sizeof buf, pipe) != nullptr) {
    out += buf;
    if (std::string(buf).find("child: executing") != std::string::npos) executing = std::chrono::steady_clock::now();
  }
  const int status = pclose(pipe);
  const auto ended = std::chrono::steady_clock::now();
  INFO(out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  REQUIRE(executing != std::chrono::steady_clock::time_point{});
  const double waited_s = std::chrono::duration<double>(ended - executing).count();
  CHECK(waited_s >= 1.0 + 2.0);  // the 1 s step limit, then the 2 s grace
  CHECK(waited_s < 1.0 + 2.0 + 3.0);
  CHECK(out.find("rank 0") != std::string::npos);
  CHECK(out.find("exceeded its time limit") != std::string::npos);
  CHECK(out.find("while issuing op 0 \"ar.blocked\"") != std::string::npos);
  CHECK(out.find("stream \"comm\"") != std::string::npos);
}

// Last: it leaves rank 0 with a stream waiting forever on a flag (and the runtime broken).
TEST_CASE("backend::watchdog: a peer-mapped recv whose send never comes times out, naming it and the peer",
          "[backend][gpu][peer]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2 (one GPU or two)");
    return;
  }
  ScheduleBuilder sb(2, {{"compute", 0}, {"tx", -1}, {"rx", -1}});
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "recv.orphan", 2, sch::Recv{0, 1, 4096, 0, sch::Transport::kCopyEngine});
  const std::string message = expect_watchdog(rt, s);
  if (rt.rank() == 0) {
    CHECK(message.find("op 0 \"recv.orphan\"") != std::string::npos);
    CHECK(message.find("waits for rank 1's send to raise its flag") != std::string::npos);
  }
}
