// GPU tests of the backend: collective data against a host reference, deps and stream order read back from the
// trace, every kernel class, refusals, and the watchdog on a mismatched schedule. Run one process per GPU under
// `mpirun -np 2 backend_tests --order decl` (every process runs the same tests in the same order).
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/error.hpp"
#include "backend/executor.hpp"
#include "common/error.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;

namespace {

sch::Schedule base(std::uint32_t world, std::vector<sch::StreamDecl> streams = {{"compute", 0}, {"comm", -1}}) {
  sch::Schedule s;
  s.name = "test";
  s.world_size = world;
  for (std::uint32_t r = 0; r < world; ++r) s.ranks.push_back(r);
  s.streams = std::move(streams);
  sch::Communicator c;
  c.name = "world";
  c.kind = "world";
  for (std::uint32_t r = 0; r < world; ++r) c.members.push_back(r);
  s.communicators.push_back(c);
  return s;
}

sch::OpId add(sch::Schedule& s, sch::RankId rank, sch::StreamId stream, std::string name, sch::Body body,
              std::vector<sch::OpId> deps = {}, int key = -1) {
  sch::Op op;
  op.id = static_cast<sch::OpId>(s.ops.size());
  op.rank = rank;
  op.stream = stream;
  op.name = std::move(name);
  op.body = std::move(body);
  op.deps = std::move(deps);
  op.tags.layer = key;
  s.ops.push_back(std::move(op));
  return s.ops.back().id;
}

sch::Compute gemm(std::uint64_t m, std::uint64_t n, std::uint64_t k, sch::DType t = sch::DType::kBF16) {
  return sch::Compute{sch::Gemm{m, n, k, 1, t}, 0};
}
sch::Compute elementwise(std::uint64_t bytes) { return sch::Compute{sch::Elementwise{bytes, 0}, 0}; }

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

TEST_CASE("backend::can_execute: refuses what it cannot run, each reason named", "[backend]") {
  be::DeviceInfo info;
  info.processes = 2;
  info.device_count = 2;
  info.local_processes = 2;
  info.free_bytes = 100ull << 30;
  auto s = base(2);
  add(s, 0, 0, "g", gemm(1024, 1024, 1024));
  add(s, 1, 0, "g", gemm(1024, 1024, 1024));
  CHECK(be::can_execute(s, info).empty());

  auto join = [](const std::vector<sch::Diagnostic>& d) {
    std::string out;
    for (const auto& x : d) out += x.field + ": " + x.message + "\n";
    return out;
  };
  be::DeviceInfo one = info;
  one.processes = 1;
  CHECK(join(be::can_execute(s, one)).find("mpirun -np 2") != std::string::npos);

  auto reduced = s;
  reduced.world_size = 4;
  CHECK(join(be::can_execute(reduced, info)).find("reduced") != std::string::npos);

  auto fp8 = s;
  fp8.ops[0].body = gemm(64, 64, 64, sch::DType::kFP8);
  const auto d = be::can_execute(fp8, info);
  REQUIRE(d.size() == 1);
  CHECK(d[0].op == 0);
  CHECK(d[0].message.find("fp8") != std::string::npos);

  auto big = s;
  big.ops[0].body = gemm(1ull << 18, 1ull << 18, 1024);  // C alone is 128 GiB
  CHECK(join(be::can_execute(big, info)).find("GPU memory") != std::string::npos);
  CHECK(be::required_device_bytes(big, 0) > (128ull << 30));
  CHECK(be::required_device_bytes(big, 1) < (1ull << 30));

  auto gqa = s;
  gqa.ops[0].body = sch::Compute{sch::Attention{1, 6, 4, 128, 128, 64, true, false, sch::DType::kBF16}, 0};
  CHECK(join(be::can_execute(gqa, info)).find("multiple of heads_kv") != std::string::npos);
}

TEST_CASE("backend::execute: every collective kind and send/recv match a host reference", "[backend][gpu]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2");
    return;
  }
  auto s = base(2);
  int key = 0;
  auto both = [&](const std::string& name, auto make) {
    ++key;
    for (sch::RankId r = 0; r < 2; ++r) add(s, r, 1, name, make(r), {}, key);
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
  add(s, 0, 1, "p2p.a", sch::Send{0, 1, 1u << 20, 0}, {}, key);
  add(s, 1, 1, "p2p.a", sch::Recv{0, 0, 1u << 20, 0}, {}, key);
  ++key;
  add(s, 1, 1, "p2p.b", sch::Send{0, 0, 12345 * 4, 1}, {}, key);
  add(s, 0, 1, "p2p.b", sch::Recv{0, 1, 12345 * 4, 1}, {}, key);

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
  auto s = base(1, {{"compute", 0}, {"side", -1}});
  const auto a = add(s, 0, 0, "a.gemm", gemm(8192, 8192, 8192));
  const auto b = add(s, 0, 1, "b.elem.after_a", elementwise(1ull << 28), {a});
  const auto c = add(s, 0, 0, "c.gemm", gemm(4096, 4096, 4096));
  const auto d = add(s, 0, 1, "d.elem.fifo_after_b", elementwise(1ull << 28));
  const auto h = add(s, 0, 0, "h.sync_on_d", sch::HostSync{d});
  const auto w = add(s, 0, 0, "w.host", sch::Host{200'000});
  const auto e = add(s, 0, 0, "e.gemm.after_sync", gemm(2048, 2048, 2048));
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
  auto s = base(1, {{"compute", 0}});
  const auto el = add(s, 0, 0, "elem.2GiB", elementwise(2ull << 30));
  const auto empty = add(s, 0, 0, "elem.empty", elementwise(0));
  const auto gg =
      add(s, 0, 0, "grouped", sch::Compute{sch::GroupedGemm{{1024, 0, 3000, 512}, 2048, 4096, sch::DType::kBF16}, 0});
  const auto af = add(s, 0, 0, "attn.fwd",
                      sch::Compute{sch::Attention{2, 32, 8, 2048, 2048, 128, true, false, sch::DType::kBF16}, 0});
  const auto ab = add(s, 0, 0, "attn.bwd",
                      sch::Compute{sch::Attention{2, 32, 8, 2048, 2048, 128, true, true, sch::DType::kBF16}, 0});
  const auto opt = add(s, 0, 0, "adam", sch::Compute{sch::Optimizer{1ull << 28, sch::DType::kBF16}, 0});
  const auto d2h = add(s, 0, 0, "d2h", sch::Compute{sch::Memcpy{256ull << 20, sch::CopyKind::kD2H}, 0});
  const auto f32 = add(s, 0, 0, "gemm.fp32", gemm(2048, 2048, 2048, sch::DType::kFP32));
  const auto f16 = add(s, 0, 0, "gemm.fp16", gemm(2048, 2048, 2048, sch::DType::kFP16));
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

TEST_CASE("backend::execute: refuses before starting with NotFeasibleError", "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  auto s = base(2);
  add(s, 0, 0, "g", gemm(64, 64, 64));
  add(s, 1, 0, "g", gemm(64, 64, 64));
  try {
    (void)rt.execute(s, quick());
    FAIL("expected NotFeasibleError");
  } catch (const twinstep::NotFeasibleError& e) {
    CHECK(std::string(e.what()).find("mpirun -np 2") != std::string::npos);
    CHECK(e.code() == twinstep::ExitCode::kNotFeasible);
  }
}

TEST_CASE("backend::watchdog: a mismatched schedule times out, names the unfinished op and aborts", "[backend][gpu]") {
  be::Runtime rt;
  if (rt.size() != 2) {
    WARN("needs two ranks: run under mpirun -np 2");
    return;
  }
  auto s = base(2);
  add(s, 0, 1, "ar.ok", sch::Collective{sch::CollectiveKind::kAllReduce, 0, 1u << 20, sch::DType::kBF16, {}, 0});
  add(s, 1, 1, "ar.ok", sch::Collective{sch::CollectiveKind::kAllReduce, 0, 1u << 20, sch::DType::kBF16, {}, 0});
  add(s, 0, 1, "ar.extra", sch::Collective{sch::CollectiveKind::kAllReduce, 0, 1u << 20, sch::DType::kBF16, {}, 0});
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
  CHECK(message.find("aborted") != std::string::npos);
  if (rt.rank() == 0) {
    CHECK(message.find("op 2 \"ar.extra\"") != std::string::npos);
    CHECK(message.find("stream \"comm\"") != std::string::npos);
  } else {
    CHECK(message.find("waiting for the other ranks") != std::string::npos);
  }
  CHECK_THROWS_AS(rt.execute(s, o), be::BackendError);  // the runtime refuses work after an abort
}
