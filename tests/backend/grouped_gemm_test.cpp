// GPU tests of the grouped GEMM as Transformer Engine's GroupedLinear runs it (grouped_gemm.hpp): one cuBLAS GEMM
// per group over the side streams, forked from and joined to the caller's stream. Groups of unequal sizes (one
// empty, more groups than streams) against a host reference exact in bf16 and against the same GEMMs issued one
// after another on one stream; and, through Runtime::execute, an op's record spanning all its groups.
#include "backend/grouped_gemm.hpp"

#include <cuda_runtime.h>

#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "backend/gemm.hpp"
#include "backend/handles.hpp"
#include "backend/plan.hpp"
#include "schedule/builder.hpp"
#include "tests/backend/bf16.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::backend::test::to_bf16;

TEST_CASE("backend::grouped_gemm: unequal groups over the side streams match a host reference and one stream",
          "[backend][gpu]") {
  // Six groups over four streams (groups 4 and 5 share streams with 0 and 1), group 1 empty. Values are multiples
  // of 1/4 in [-1, 1]: every product and partial sum is exact in fp32, so C is the exact sum rounded once to bf16.
  const std::vector<std::uint64_t> m{64, 0, 200, 8, 130, 33};
  const std::uint64_t n = 96, k = 160;
  const std::uint64_t rows = std::accumulate(m.begin(), m.end(), std::uint64_t{0});
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> q(-4, 4);
  std::vector<std::uint16_t> a(rows * k), b(m.size() * k * n);
  std::vector<float> af(a.size()), bf(b.size());
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = to_bf16(af[i] = static_cast<float>(q(rng)) / 4);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = to_bf16(bf[i] = static_cast<float>(q(rng)) / 4);
  std::vector<std::uint16_t> want(rows * n);
  std::uint64_t row0 = 0;
  for (std::size_t g = 0; g < m.size(); ++g) {
    for (std::uint64_t r = row0; r < row0 + m[g]; ++r) {
      for (std::uint64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (std::uint64_t l = 0; l < k; ++l) acc += double{af[r * k + l]} * double{bf[(g * k + l) * n + j]};
        want[r * n + j] = to_bf16(static_cast<float>(acc));
      }
    }
    row0 += m[g];
  }

  const be::DeviceMemory da = be::device_alloc(a.size() * 2), db = be::device_alloc(b.size() * 2),
                         dc = be::device_alloc(want.size() * 2), dc1 = be::device_alloc(want.size() * 2);
  REQUIRE(cudaMemcpy(da.get(), a.data(), a.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(db.get(), b.data(), b.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemset(dc.get(), 0xFF, want.size() * 2) == cudaSuccess);  // NaN: every element must be written
  REQUIRE(cudaMemset(dc1.get(), 0xFF, want.size() * 2) == cudaSuccess);
  std::vector<be::GemmCall> calls, calls1;
  row0 = 0;
  for (std::size_t g = 0; g < m.size(); ++g) {
    const auto* pa = static_cast<const char*>(da.get()) + row0 * k * 2;
    const auto* pb = static_cast<const char*>(db.get()) + g * k * n * 2;
    calls.push_back(
        be::plain_gemm(m[g], n, k, false, false, pa, pb, static_cast<char*>(dc.get()) + row0 * n * 2, 1, CUDA_R_16BF));
    calls1.push_back(
        be::plain_gemm(m[g], n, k, false, false, pa, pb, static_cast<char*>(dc1.get()) + row0 * n * 2, 1, CUDA_R_16BF));
    row0 += m[g];
  }

  const be::CudaStream origin = be::make_stream(0);
  const be::GroupedGemmStreams streams;
  std::vector<std::size_t> issued;
  streams.run(origin.get(), m.size(), [&](std::size_t g, const be::GroupedSideStream& side) {
    issued.push_back(g);
    be::run_gemm(side.blas.handle.get(), calls[g]);
  });
  // The join: a copy issued on the origin stream after run() sees every group's C.
  std::vector<std::uint16_t> got(want.size()), got1(want.size());
  REQUIRE(cudaMemcpyAsync(got.data(), dc.get(), got.size() * 2, cudaMemcpyDeviceToHost, origin.get()) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(origin.get()) == cudaSuccess);
  CHECK(issued == std::vector<std::size_t>{0, 1, 2, 3, 4, 5});
  CHECK(be::GroupedGemmStreams::streams_used(m.size()) == be::kGroupedGemmStreams);
  CHECK(be::GroupedGemmStreams::streams_used(2) == 2);
  CHECK(be::GroupedGemmStreams::streams_used(0) == 0);

  // The old path: the same GEMMs one after another on one stream.
  const be::BlasSlot one = be::make_blas_slot(be::kCublasWorkspaceBytes);
  REQUIRE(cublasSetStream(one.handle.get(), origin.get()) == CUBLAS_STATUS_SUCCESS);
  for (const auto& c : calls1) be::run_gemm(one.handle.get(), c);
  REQUIRE(cudaMemcpyAsync(got1.data(), dc1.get(), got1.size() * 2, cudaMemcpyDeviceToHost, origin.get()) ==
          cudaSuccess);
  REQUIRE(cudaStreamSynchronize(origin.get()) == cudaSuccess);

  std::size_t wrong = 0, differ = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    wrong += got[i] != want[i] ? 1 : 0;
    differ += got[i] != got1[i] ? 1 : 0;
  }
  CHECK(wrong == 0);
  CHECK(differ == 0);
}

TEST_CASE("backend::execute: a grouped-GEMM op's record spans all its groups, over Transformer Engine's streams",
          "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  twinstep::schedule::ScheduleBuilder b(1, {{"compute", 0}});
  // Five full 4096^3 GEMMs (0.14 TFLOP each, each alone fills an H100) and an empty group, then one alone.
  const auto gg =
      b.add(0, "grouped", 0,
            sch::Compute{sch::GroupedGemm{{4096, 4096, 0, 4096, 4096, 4096}, 4096, 4096, sch::DType::kBF16}, 0});
  const auto after = b.gemm(0, "gemm.after", 0, 4096, 4096, 4096);
  const auto s = b.take();
  be::Options o;
  o.warmup_steps = 1;
  o.steps = 3;
  o.timeout_s = 60;
  const auto trace = rt.execute(s, o);
  const auto& r = trace.records;
  const double grouped_s = static_cast<double>(r[gg].end_ns - r[gg].start_ns) * 1e-9;
  const double one_s = static_cast<double>(r[after].end_ns - r[after].start_ns) * 1e-9;
  INFO("grouped " << grouped_s * 1e3 << " ms, one group alone " << one_s * 1e3 << " ms");
  // Compute-bound GEMMs that each fill the GPU cannot run five in less than 2.5 times one: an end recorded before
  // the join (or a record of the fork alone) would.
  CHECK(grouped_s > 2.5 * one_s);
  CHECK(r[after].start_ns >= r[gg].end_ns);  // the op's stream waited for every side stream
  const std::string note = trace.context.at("grouped_gemm");
  INFO(note);
  CHECK(note.find("over 4 side streams") != std::string::npos);
  CHECK(note.find("1 grouped-GEMM ops") != std::string::npos);
}
